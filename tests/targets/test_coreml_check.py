"""Core ML pre-flight: what the target refuses before lowering, each with its field and reason."""

from __future__ import annotations

from typing import Any

import pytest

from omnic.spec import ResolvedSpec
from omnic.targets.base import get_target

MODEL = {
    "vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
    "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": True,
}
INT4 = {"weights": {"scheme": "int4", "group_size": 32}}
INT8_CHANNEL = {"weights": {"scheme": "int8"}}


def spec(coreml: dict | None = None, quantization: dict | None = None, model: dict | None = None,
         device: dict | None = None) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny",
        "device": {"name": "phone", "memory_budget_mb": 1400, "bandwidth_gbps": 12.0,
                   "os": "ios", "os_version": "18", **(device or {})},
        "model": {**MODEL, **(model or {})}, "quantization": quantization or {},
        "targets": {"coreml": coreml or {}},
    })


def problems(s: ResolvedSpec) -> list[tuple[str, str]]:
    found = get_target("coreml").check(s)
    assert all(p.target == "coreml" for p in found)
    return [(p.field, p.message) for p in found]


def fields(s: ResolvedSpec) -> list[str]:
    return sorted(f for f, _ in problems(s))


def test_ios18_int4_blocks_and_state_are_accepted():
    assert problems(spec({"deployment_target": "iOS18"}, INT4)) == []
    assert problems(spec({"deployment_target": "macOS15"}, INT4, device={"os": "macos",
                                                                        "os_version": "15"})) == []


@pytest.mark.parametrize("target", ["iOS16", "iOS17", "macOS14"])
def test_stateful_kv_needs_ios18(target: str):
    found = problems(spec({"deployment_target": target}))  # the device runs iOS 18
    assert [f for f, _ in found] == ["targets.coreml.deployment_target"]
    assert "state" in found[0][1] and "iOS18" in found[0][1]


def test_ios17_refuses_int4_per_block_with_its_own_reason():
    found = problems(spec({"deployment_target": "iOS17"}, INT4, device={"os_version": "17"}))
    messages = [m for f, m in found if f == "targets.coreml.deployment_target"]
    assert any("int4" in m and "iOS18" in m for m in messages), found
    assert any("state" in m for m in messages), found  # both reasons, separately


def test_int8_per_channel_is_not_refused_for_its_blocks_on_ios17():
    ios17 = {"os_version": "17"}
    found = problems(spec({"deployment_target": "iOS17"}, INT8_CHANNEL, device=ios17))
    assert not any("int8" in m for _, m in found), found  # only the state rule fires
    blocks = {"weights": {"scheme": "int8", "group_size": 32}}
    found = problems(spec({"deployment_target": "iOS17"}, blocks, device={"os_version": "17"}))
    assert any("int8 per-block" in m for _, m in found), found


def test_block_must_tile_the_input_width():
    # d_model 64 and ffn hidden 128: group 48 tiles neither.
    found = problems(spec(quantization={"weights": {"scheme": "int4", "group_size": 48}}))
    assert [f for f, _ in found] == ["quantization.weights.group_size"]
    assert "multiple of group_size" in found[0][1]


@pytest.mark.parametrize("case, field", [
    (dict(quantization={"weights": {"scheme": "bf16"}}), "quantization.weights.scheme"),
    (dict(quantization={"kv_cache": "int8"}), "quantization.kv_cache"),
    (dict(quantization={"weights": {"scheme": "fp16"}}, coreml={"compute_precision": "fp32"}),
     "quantization.weights.scheme"),
    (dict(device={"os_version": "17"}), "targets.coreml.deployment_target"),
])
def test_other_refusals_name_their_field(case: dict[str, Any], field: str):
    assert fields(spec(**case)) == [field]


def test_moe_and_sliding_window_are_accepted():
    """Both convert (the slow lowering test converts them); check() must not refuse them."""
    model = {"moe": {"experts": 4, "top_k": 2}, "sliding_window": {"size": 8, "layers": "even"}}
    assert problems(spec(model=model, quantization=INT4)) == []


def test_check_refuses_what_lower_cannot_take():
    """lower() does not repeat the pre-flight (the pipeline runs check first): check refuses."""
    bad = spec({"deployment_target": "iOS17"}, INT4, device={"os_version": "17"})
    assert "targets.coreml.deployment_target" in fields(bad)


def test_missing_coremltools_is_a_problem_and_not_runnable(monkeypatch, tmp_path):
    import sys

    from omnic.targets.base import Artifact, NotRunnable

    monkeypatch.setitem(sys.modules, "coremltools", None)  # `import coremltools` fails
    assert problems(spec()) == [("targets.coreml",
                                 "coreml: coremltools is not installed: install omnic[coreml]")]
    component = Artifact("vision_encoder", "coreml", "coreml/vision_encoder.mlpackage")
    with pytest.raises(NotRunnable, match="install omnic\\[coreml\\]"):
        get_target("coreml").load(component, tmp_path)
