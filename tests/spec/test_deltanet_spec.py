"""Qwen3.5's gated_deltanet layers in the spec: validation, the memory plan's fixed-size state
and what int4 does to each of their tensors (torch-free)."""

from __future__ import annotations

import pytest
import yaml

from omnic.cli.main import main

# Two Gated DeltaNet layers around one gated attention layer.
MODEL = {"vocab_size": 320, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 256,
         "tie_embeddings": True, "qk_norm": True, "attn_output_gate": True,
         "gated_deltanet": {"key_heads": 2, "value_heads": 4, "key_dim": 16, "value_dim": 16},
         "layer_pattern": ["gated_deltanet", "full", "gated_deltanet"]}


def _spec(tmp_path, model=None):
    body = {"omnic": 1, "name": "qwen35",
            "device": {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0,
                       "os": "linux"},
            "model": {**MODEL, **(model or {})}, "weights": {"source": "random", "seed": 0},
            "tokenizer": {"kind": "byte"}, "targets": {}}
    path = tmp_path / "qwen35.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_gated_deltanet_hybrid_validates(tmp_path, capsys):
    assert main(["validate", str(_spec(tmp_path))]) == 0, capsys.readouterr()


@pytest.mark.parametrize("model, words", [
    ({"gated_deltanet": None}, "no gated_deltanet"),
    ({"layer_pattern": ["full"] * 3}, "no layer of layer_pattern is gated_deltanet"),
    ({"layer_pattern": ["gated_deltanet"] * 3}, "at least one attention layer"),
    ({"gated_deltanet": {"key_heads": 3, "value_heads": 4, "key_dim": 16, "value_dim": 16}},
     "does not divide"),
])
def test_an_inconsistent_gated_deltanet_hybrid_is_refused(tmp_path, capsys, model, words):
    assert main(["validate", str(_spec(tmp_path, model))]) == 2
    out, err = capsys.readouterr()
    assert words in out + err and "Traceback" not in out + err


def test_the_plan_counts_a_state_for_the_deltanet_layers_and_a_cache_for_the_others():
    from omnic.compiler.plan import kv_cache_bytes
    from omnic.presets import store
    from tiny_specs import make_resolved_spec

    model = store.load("model", "qwen3.5_0.8b").model_dump(exclude_none=True)
    spec = make_resolved_spec(model)
    # 6 attention layers: K and V of 2 heads x 256 dims at 4096 positions in float32; 18
    # DeltaNet layers, each: the convolution's last 3 inputs of 2 x 2048 + 2048 channels and 16
    # value heads' 128 x 128 state, in float32, whatever the context
    kv = 6 * 2 * 2 * 256 * 4096 * 4
    state = 18 * (3 * 6144 + 16 * 128 * 128) * 4
    assert kv_cache_bytes(spec) == kv + state
    longer = make_resolved_spec(model, {"context_length": 8192})
    assert kv_cache_bytes(longer) == 2 * kv + state


def test_int4_takes_the_deltanet_projections_and_keeps_its_decay_in_float():
    from omnic.presets import store
    from omnic.targets.explain import explain
    from tiny_specs import make_resolved_spec

    model = store.load("model", "qwen3.5_0.8b").model_dump(exclude_none=True)
    int4 = store.load("quantization", "int4_g32").model_dump()
    spec = make_resolved_spec(model, quantization=int4, targets={})
    by_tensor = {t: r for r in explain(spec, targets=[]).rows for t in r.tensors}
    for name in ("layers.0.deltanet.qkv.weight", "layers.0.deltanet.z.weight",
                 "layers.22.deltanet.out_proj.weight", "layers.3.attn.gate.weight"):
        assert by_tensor[name].scheme == "int4_g32", name
    for name, words in (("conv.weight", "convolution"), ("A_log", "decay"),
                        ("dt_bias", "decay bias"), ("b.weight", "beta projection"),
                        ("a.weight", "decay projection")):
        row = by_tensor[f"layers.0.deltanet.{name}"]
        assert row.scheme == "fp32" and words in row.rule, (name, row.rule)
    assert by_tensor["layers.0.deltanet.norm.weight"].scheme == "fp32"


@pytest.mark.parametrize("target", ["onnx", "gguf", "executorch", "coreml", "tvm"])
def test_every_target_carries_the_kind(tmp_path, capsys, target):
    path = _spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["targets"] = {target: {}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["validate", str(path)]) == 0, capsys.readouterr()
