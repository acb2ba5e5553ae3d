"""Tiny resolved specs built directly (no presets, no files) for unit tests of the builder."""

from __future__ import annotations

from typing import Any

TEST_DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}


def make_resolved_spec(base_model: dict[str, Any], model: dict[str, Any] | None = None,
                       **top: Any):
    """A ResolvedSpec built directly (no presets) from `base_model` with `model` keys on top."""
    from omnic.spec import ResolvedSpec

    body = {"omnic": 1, "name": "tiny", "device": TEST_DEVICE,
            "model": {**base_model, **(model or {})}, "quantization": {}, "targets": {}, **top}
    return ResolvedSpec.model_validate(body)
