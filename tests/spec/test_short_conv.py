"""LFM2's short_conv layers in the spec: validation, the refusal of the targets that cannot carry
them, and the memory plan's fixed-size state (torch-free)."""

from __future__ import annotations

import pytest
import yaml

from omnic.cli.main import main

# A hybrid of two convolution layers around one attention layer.
MODEL = {"vocab_size": 320, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 256,
         "tie_embeddings": True, "qk_norm": True, "short_conv": {"kernel": 3},
         "layer_pattern": ["short_conv", "full", "short_conv"]}


def _spec(tmp_path, model=None, targets=None):
    body = {"omnic": 1, "name": "hybrid",
            "device": {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0,
                       "os": "linux"},
            "model": {**MODEL, **(model or {})}, "weights": {"source": "random", "seed": 0},
            "tokenizer": {"kind": "byte"}, "targets": targets or {"gguf": {}}}
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_hybrid_validates_with_gguf(tmp_path, capsys):
    assert main(["validate", str(_spec(tmp_path))]) == 0, capsys.readouterr()


@pytest.mark.parametrize("model, words", [
    ({"short_conv": None}, "no short_conv"),
    ({"layer_pattern": ["full", "full", "full"]}, "no layer of layer_pattern is short_conv"),
    ({"layer_pattern": ["short_conv"] * 3}, "at least one attention layer"),
    ({"short_conv": {"kernel": 1}}, "kernel"),
])
def test_an_inconsistent_hybrid_is_refused(tmp_path, capsys, model, words):
    assert main(["validate", str(_spec(tmp_path, model))]) == 2
    out, err = capsys.readouterr()
    assert words in out + err and "Traceback" not in out + err


@pytest.mark.parametrize("target", ["onnx", "gguf", "executorch", "coreml", "tvm"])
def test_every_target_carries_the_kind(tmp_path, capsys, target):
    assert main(["validate", str(_spec(tmp_path, targets={target: {}}))]) == 0, capsys.readouterr()


def test_a_target_without_the_kind_refuses_it_naming_it(tmp_path, capsys, monkeypatch):
    from omnic.targets import mixers

    monkeypatch.setitem(mixers.CARRIED, "coreml", set())
    assert main(["validate", str(_spec(tmp_path, targets={"coreml": {}}))]) == 2
    out, err = capsys.readouterr()
    text = " ".join((out + err).split())
    assert "coreml cannot carry short_conv layers" in text and "disable targets.coreml" in text


def test_tvm_takes_the_kind_on_the_host_but_not_in_its_gpu_builds(tmp_path, capsys):
    status = main(["validate", str(_spec(tmp_path, targets={"tvm": {}}))])
    assert status == 0, capsys.readouterr()
    path = _spec(tmp_path, targets={"tvm": {"devices": ["opencl"]}})
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "cannot carry short_conv layers" in " ".join((out + err).split())


def test_the_plan_counts_a_state_for_the_conv_layers_and_a_cache_for_the_others():
    from omnic.compiler.plan import kv_cache_bytes
    from omnic.presets import store
    from tiny_specs import make_resolved_spec

    model = store.load("model", "lfm2_350m").model_dump(exclude_none=True)
    spec = make_resolved_spec(model)
    # 6 attention layers: K and V of 8 heads x 64 dims at 4096 positions in float32 (no KV
    # quantization); 10 conv layers: 2 x 1024 float32 values each, whatever the context
    kv, state = 6 * 2 * 8 * 64 * 4096 * 4, 10 * 2 * 1024 * 4
    assert kv_cache_bytes(spec) == kv + state
    longer = make_resolved_spec(model, {"context_length": 8192})
    assert kv_cache_bytes(longer) == 2 * kv + state


def test_int4_takes_the_conv_projections_and_leaves_the_kernel_in_float():
    from omnic.presets import store
    from omnic.targets.explain import explain
    from tiny_specs import make_resolved_spec

    model = store.load("model", "lfm2_350m").model_dump(exclude_none=True)
    int4 = store.load("quantization", "int4_g32").model_dump()
    spec = make_resolved_spec(model, quantization=int4, targets={"gguf": {}})
    ex = explain(spec)
    by_tensor = {t: r for r in ex.rows for t in r.tensors}
    for name in ("layers.0.conv.in_proj.weight", "layers.15.conv.out_proj.weight"):
        assert by_tensor[name].scheme == "int4_g32" and by_tensor[name].targets["gguf"] == "Q4_0"
    kernel = by_tensor["layers.0.conv.kernel.weight"]
    assert kernel.scheme == "fp32" and "short_conv kernel" in kernel.rule
    assert "short_conv state: 2 x 1,024 float32 x 10 layers" in ex.kv_extent["gguf"]
