"""Granite 4's mamba2 layers in the spec: validation, the refusal of a target that cannot carry
them, the memory plan's fixed-size state and what int4 does to each of their tensors
(torch-free)."""

from __future__ import annotations

import pytest
import yaml

from omnic.cli.main import main

# Two Mamba-2 layers around one NoPE attention layer.
MODEL = {"vocab_size": 320, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 256,
         "tie_embeddings": True,
         "mamba2": {"heads": 4, "head_dim": 32, "d_state": 16, "groups": 2, "kernel": 4},
         "layer_pattern": ["mamba2", "nope", "mamba2"]}


def _spec(tmp_path, model=None, targets=None):
    body = {"omnic": 1, "name": "granite",
            "device": {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0,
                       "os": "linux"},
            "model": {**MODEL, **(model or {})}, "weights": {"source": "random", "seed": 0},
            "tokenizer": {"kind": "byte"}, "targets": targets or {"gguf": {}}}
    path = tmp_path / "granite.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_mamba2_hybrid_validates(tmp_path, capsys):
    assert main(["validate", str(_spec(tmp_path, targets={}))]) == 0, capsys.readouterr()


@pytest.mark.parametrize("model, words", [
    ({"mamba2": None}, "no mamba2"),
    ({"layer_pattern": ["full", "nope", "full"]}, "no layer of layer_pattern is mamba2"),
    ({"layer_pattern": ["mamba2"] * 3}, "at least one attention layer"),
    ({"mamba2": {"heads": 4, "head_dim": 32, "d_state": 16, "groups": 3}}, "does not divide"),
    ({"layer_pattern": "2 mamba : 1 full"}, "unknown layer kind 'mamba'"),
])
def test_an_inconsistent_mamba2_hybrid_is_refused(tmp_path, capsys, model, words):
    assert main(["validate", str(_spec(tmp_path, model))]) == 2
    out, err = capsys.readouterr()
    assert words in out + err and "Traceback" not in out + err


@pytest.mark.parametrize("target", ["onnx", "gguf", "executorch", "coreml", "tvm"])
def test_every_target_carries_the_kind(tmp_path, capsys, target):
    assert main(["validate", str(_spec(tmp_path, targets={target: {}}))]) == 0, capsys.readouterr()


def test_a_target_without_the_kind_refuses_it_naming_it(tmp_path, capsys, monkeypatch):
    from omnic.targets import mixers

    monkeypatch.setitem(mixers.CARRIED, "coreml", {"short_conv"})
    assert main(["validate", str(_spec(tmp_path, targets={"coreml": {}}))]) == 2
    out, err = capsys.readouterr()
    text = " ".join((out + err).split())
    assert "coreml cannot carry mamba2 layers" in text and "disable targets.coreml" in text


def test_the_plan_counts_a_state_for_the_mamba2_layers_and_a_cache_for_the_others():
    from omnic.compiler.plan import kv_cache_bytes
    from omnic.presets import store
    from tiny_specs import make_resolved_spec

    model = store.load("model", "granite4.0_h_350m").model_dump(exclude_none=True)
    spec = make_resolved_spec(model)
    # 4 attention layers: K and V of 4 heads x 64 dims at 4096 positions in float32; 28 Mamba-2
    # layers, each: the convolution's last 3 inputs of 1536 + 2 x 128 channels and the
    # recurrent state of 48 heads x 32 channels x 128, in float32, whatever the context
    kv = 4 * 2 * 4 * 64 * 4096 * 4
    state = 28 * (3 * (1536 + 256) + 48 * 32 * 128) * 4
    assert kv_cache_bytes(spec) == kv + state
    longer = make_resolved_spec(model, {"context_length": 8192})
    assert kv_cache_bytes(longer) == 2 * kv + state


def test_int4_takes_the_mamba2_projections_and_keeps_its_state_space_parameters_in_float():
    from omnic.presets import store
    from omnic.targets.explain import explain
    from tiny_specs import make_resolved_spec

    model = store.load("model", "granite4.0_h_350m").model_dump(exclude_none=True)
    int4 = store.load("quantization", "int4_g32").model_dump()
    spec = make_resolved_spec(model, quantization=int4, targets={})
    ex = explain(spec, targets=[])
    by_tensor = {t: r for r in ex.rows for t in r.tensors}
    for name in ("layers.0.ssm.in_proj.weight", "layers.31.ssm.out_proj.weight"):
        assert by_tensor[name].scheme == "int4_g32"
    for name, words in (("conv.weight", "convolution"), ("conv.bias", "bias"),
                        ("A_log", "decay"), ("dt_bias", "time-step"), ("D", "skip")):
        row = by_tensor[f"layers.0.ssm.{name}"]
        assert row.scheme == "fp32" and words in row.rule, (name, row.rule)
    assert by_tensor["layers.0.ssm.norm.weight"].scheme == "fp32"
