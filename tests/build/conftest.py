"""Shared fixtures of the builder tests: tiny resolved specs built without presets."""

from __future__ import annotations

from typing import Any

import pytest

from omnic.spec import ResolvedSpec

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {
    "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
    "ffn": {"kind": "swiglu", "hidden": 128}, "norm": {"kind": "rmsnorm", "eps": 1e-5},
    "rope": {"theta": 10000.0}, "context_length": 64, "tie_embeddings": True,
}


def resolved_spec(model: dict[str, Any] | None = None, **top: Any) -> ResolvedSpec:
    """A ResolvedSpec of the tiny llama model, with `model` keys overriding TINY."""
    body = {
        "omnic": 1, "name": "tiny", "device": DEVICE, "model": {**TINY, **(model or {})},
        "quantization": {}, "targets": {}, **top,
    }
    return ResolvedSpec.model_validate(body)


@pytest.fixture(scope="session")
def make_spec():
    return resolved_spec


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine torch's
    spinning worker threads make each forward ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
