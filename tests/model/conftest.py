"""Shared fixtures of the builder tests: tiny resolved specs built without presets."""

from __future__ import annotations


import pytest

from tiny_specs import make_resolved_spec

TINY = {
    "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
    "ffn": {"kind": "swiglu", "hidden": 128}, "norm": {"kind": "rmsnorm", "eps": 1e-5},
    "rope": {"theta": 10000.0}, "context_length": 64, "tie_embeddings": True,
}


def resolved_spec(model=None, **top):
    """A ResolvedSpec of the tiny model, with `model` keys overriding TINY."""
    return make_resolved_spec(TINY, model, **top)


@pytest.fixture(scope="session")
def make_spec():
    return resolved_spec


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""
