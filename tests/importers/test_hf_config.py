"""`model_from_config` on config.json files alone (no weights): the older layouts transformers still
reads, the per-layer patterns it writes, and the features it rejects by name."""

from __future__ import annotations

import json

import pytest

from omnic.importers.hf import UnsupportedModel, compact_pattern, model_from_config
from omnic.spec.layers import pattern_kinds

BASE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64}


def _model(arch: str, **config):
    return model_from_config({"architectures": [arch], **BASE, **config})[1]


@pytest.mark.parametrize("kinds, pattern", [
    (["sliding"] * 5 + ["full"], ["sliding"] * 5 + ["full"]),  # nothing repeats: the list
    ((["sliding"] * 5 + ["full"]) * 3, "5 sliding : 1 full"),
    ((["sliding"] * 5 + ["full"]) * 4 + ["sliding"] * 2, "5 sliding : 1 full ..."),
    (["full", "full", "full", "nope"] * 9, "3 full : 1 nope"),
    (["full", "nope", "full"], "1 full : 1 nope ..."),
    (["full", "nope", "nope"], ["full", "nope", "nope"]),
])
def test_compact_pattern(kinds, pattern):
    assert compact_pattern(kinds) == pattern
    assert pattern_kinds(pattern, len(kinds)) == kinds


def test_gemma3_older_layout_reads_as_transformers_converts_it():
    """rope_theta + rope_local_base_freq + rope_scaling + sliding_window_pattern (the Hub's Gemma 3
    files) and what transformers 5 makes of them (rope_parameters per layer type, layer_types)."""
    from transformers import Gemma3TextConfig

    old = {**BASE, "num_hidden_layers": 8, "head_dim": 16, "sliding_window": 4,
           "sliding_window_pattern": 3, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    new = json.loads(Gemma3TextConfig(**old).to_json_string())
    assert "full_attention" in new["rope_parameters"] and "layer_types" in new
    arch = {"architectures": ["Gemma3ForCausalLM"]}
    _, from_old = model_from_config({**arch, **old})
    _, from_new = model_from_config({**arch, **new})
    assert from_old == from_new
    assert from_old["layer_pattern"] == "2 sliding : 1 full ..."
    assert from_old["rope"] == {"theta": 1e6, "scaling": {"kind": "linear", "factor": 8.0},
                                "sliding": {"theta": 1e4, "scaling": None}}
    assert from_old["sliding_window"] == {"size": 4}


def test_gemma_explicit_null_window_turns_sliding_off():
    model = _model("Gemma2ForCausalLM", num_hidden_layers=2, sliding_window=None)
    assert "sliding_window" not in model and "layer_pattern" not in model


def test_phi3_older_longrope_names():
    factors = [1.0] * 8
    model = _model("Phi3ForCausalLM", num_hidden_layers=2, max_position_embeddings=256,
                   original_max_position_embeddings=64,
                   rope_scaling={"type": "su", "short_factor": factors, "long_factor": factors})
    assert model["rope"]["scaling"] == {"kind": "longrope", "short_factor": factors,
                                        "long_factor": factors, "factor": 4.0,
                                        "original_context_length": 64}


@pytest.mark.parametrize("arch, config, needle", [
    ("Qwen3MoeForCausalLM", {"num_experts": 4, "moe_intermediate_size": 32,
                             "decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ("Qwen3MoeForCausalLM", {"num_experts": 4, "moe_intermediate_size": 32,
                             "mlp_only_layers": [1]}, "mlp_only_layers=[1]"),
    ("SmolLM3ForCausalLM", {"use_sliding_window": True, "sliding_window": 8,
                            "no_rope_layers": [1, 0]}, "layer 1 slides without RoPE"),
    ("Gemma3ForCausalLM", {"use_bidirectional_attention": True},
     "use_bidirectional_attention"),
    ("Gemma3ForCausalLM", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
     "rope_parameters keys"),
    ("MistralForCausalLM", {"layer_types": ["chunked_attention", "full_attention"]},
     "layer types ['chunked_attention']"),
])
def test_unsupported_features_are_named(arch, config, needle):
    with pytest.raises(UnsupportedModel) as err:
        _model(arch, num_hidden_layers=2, **config)
    assert needle in str(err.value)


@pytest.mark.parametrize("extra", [
    {"intermediate_size": 300, "full_attn_idxs": [1]},  # the older attention index list
    {"block_ff_dim": 300, "tie_embedding": False, "full_attn_idxs": [0, 3]},  # older names
    {"intermediate_size": 300, "block_ffn_dim_multiplier": 1.5, "block_multiple_of": 64,
     "layer_types": ["conv", "full_attention", "conv", "conv"]},
    {"intermediate_size": 300, "block_auto_adjust_ff_dim": False, "full_attn_idxs": [2]},
    {"intermediate_size": 300},  # no index list: every layer attends, no convolution
])
def test_lfm2_config_reads_as_transformers_does(extra):
    """The FFN width, the tied head and the layer kinds of LFM2's config variants, against
    transformers' own Lfm2Config and Lfm2MLP."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.lfm2.modeling_lfm2 import Lfm2MLP

    cfg = {"architectures": ["Lfm2ForCausalLM"], "vocab_size": 512, "hidden_size": 64,
           "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, **extra}
    _, model = model_from_config(cfg)
    theirs = transformers.Lfm2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
    assert model["ffn"]["hidden"] == Lfm2MLP(theirs).w1.out_features
    assert model["tie_embeddings"] == theirs.tie_word_embeddings
    kinds = pattern_kinds(model.get("layer_pattern") or "1 full", 4)
    assert kinds == ["short_conv" if t == "conv" else "full" for t in theirs.layer_types]
    assert ("short_conv" in model) == ("conv" in theirs.layer_types)
