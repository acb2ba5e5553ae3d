"""Tiny resolved specs built directly (no presets, no files) for unit tests of the builder."""

from __future__ import annotations

from typing import Any

TEST_DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}

# The smallest spec most tests start from (tests/conftest.py builds its fixtures on it).
TINY_SPEC: dict[str, Any] = {
    "omnic": 1,
    "name": "tiny",
    "device": dict(TEST_DEVICE),
    "model": {
        "vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": True,
    },
    "weights": {"source": "random", "seed": 0},
    "tokenizer": {"kind": "byte"},
    "targets": {"onnx": {}},
    "golden": {"cases": 2, "prompt_tokens": 8, "decode_steps": 4, "seed": 0},
}


def make_resolved_spec(base_model: dict[str, Any], model: dict[str, Any] | None = None,
                       **top: Any):
    """A ResolvedSpec built directly (no presets) from `base_model` with `model` keys on top."""
    from omnic.spec import ResolvedSpec

    body = {"omnic": 1, "name": "tiny", "device": TEST_DEVICE,
            "model": {**base_model, **(model or {})}, "quantization": {}, "targets": {}, **top}
    return ResolvedSpec.model_validate(body)
