"""Quantization selection: ordered overrides, first match wins, all given keys must match."""

from __future__ import annotations

from omnic.presets import resolve
from omnic.quant.select import TensorScheme, tensor_schemes
from omnic.spec import Spec

MODEL = {"vocab_size": 300, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 32, "tie_embeddings": False,
         "qkv_bias": True}


def schemes(quantization: dict) -> dict[str, TensorScheme]:
    spec = Spec.model_validate({"omnic": 1, "name": "q", "device": "desktop_cpu", "model": MODEL,
                                "quantization": quantization, "targets": {"onnx": {}}})
    return tensor_schemes(resolve(spec, "."))


def test_default_applies_to_matrices_and_norms_biases_stay_fp32():
    s = schemes({"weights": {"scheme": "int4", "group_size": 32, "symmetric": False}})
    assert s["layers.1.attn.q.weight"] == TensorScheme("int4", 32, False, None)
    assert s["lm_head.weight"] == TensorScheme("int4", 32, False, None)
    for name in ("layers.0.attn_norm.weight", "layers.2.attn.q.bias", "norm.weight"):
        assert s[name] == TensorScheme("fp32", None, True, None)
    # every tensor of the inventory gets an answer: 1 embed + 3*(2 norms + 4 proj + 3 bias + 3 ffn)
    # + final norm + lm_head
    assert len(s) == 1 + 3 * 12 + 2


def test_first_match_wins_and_index_is_recorded():
    s = schemes({"weights": {"scheme": "int4", "group_size": 32}, "overrides": [
        {"match": {"name": r"layers\.1\..*"}, "scheme": "int8"},
        {"match": {"role": "attention"}, "scheme": "fp16"},
    ]})
    assert s["layers.1.attn.q.weight"] == TensorScheme("int8", None, True, 0)  # both match: first
    assert s["layers.0.attn.q.weight"] == TensorScheme("fp16", None, True, 1)
    assert s["layers.0.ffn.up.weight"] == TensorScheme("int4", 32, True, None)
    assert s["layers.1.attn.q.bias"].scheme == "fp32"  # regex matches, but biases stay fp32


def test_all_given_keys_must_match_and_layer_range_is_inclusive():
    s = schemes({"weights": {"scheme": "fp16"}, "overrides": [
        {"match": {"role": "ffn", "layers": [1, 2]}, "scheme": "int8", "group_size": 32},
    ]})
    assert s["layers.0.ffn.down.weight"].scheme == "fp16"
    assert s["layers.1.ffn.down.weight"] == TensorScheme("int8", 32, True, 0)
    assert s["layers.2.ffn.gate.weight"].override == 0
    assert s["layers.2.attn.o.weight"].scheme == "fp16"  # role differs


def test_layer_ranges_never_match_tensors_outside_layers():
    s = schemes({"weights": {"scheme": "fp16"}, "overrides": [
        {"match": {"layers": [0, 2]}, "scheme": "int8"},
    ]})
    assert s["embed.weight"].scheme == "fp16" and s["lm_head.weight"].scheme == "fp16"
    assert s["layers.0.attn.k.weight"].scheme == "int8"


def test_name_is_a_full_match_not_a_search():
    s = schemes({"weights": {"scheme": "fp16"}, "overrides": [
        {"match": {"name": r"attn\.q\.weight"}, "scheme": "int8"},    # would match by search
        {"match": {"name": r"embed\.weight"}, "scheme": "int8"},
    ]})
    assert s["layers.0.attn.q.weight"].scheme == "fp16"
    assert s["embed.weight"] == TensorScheme("int8", None, True, 1)
