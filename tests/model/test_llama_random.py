"""An omnic-built llama with random weights equals transformers' LlamaForCausalLM carrying the
same weights (copied across by name), and random weights are seeded and deterministic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from omnic.model import build_model


def _to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """omnic canonical names -> transformers Llama names (written here independently of omnic)."""
    table = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.o_proj", "ffn.gate": "mlp.gate_proj", "ffn.up": "mlp.up_proj",
        "ffn.down": "mlp.down_proj",
    }
    out = {}
    for name, t in state.items():
        if name == "embed.weight":
            out["model.embed_tokens.weight"] = t
        elif name == "norm.weight":
            out["model.norm.weight"] = t
        elif name == "lm_head.weight":
            out[name] = t
        else:
            _, i, rest = name.split(".", 2)
            part, leaf = rest.rsplit(".", 1)
            out[f"model.layers.{i}.{table[part]}.{leaf}"] = t
    return out


@pytest.fixture(scope="module")
def pair(make_spec):
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = make_spec({"tie_embeddings": False}, weights={"source": "random", "seed": 3})
    dec = build_model(spec, ".")
    c = dec.config
    cfg = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim, max_position_embeddings=c.context_length, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta, tie_word_embeddings=False, attn_implementation="eager",
    )
    hf = LlamaForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(_to_hf(dec.state_dict()), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return dec, hf


def test_prefill_matches_transformers(pair):
    dec, hf = pair
    tokens = torch.tensor([[1, 45, 300, 7, 7, 511, 0, 128, 64, 2]])
    k, v = dec.empty_cache()
    ours = dec(tokens, torch.arange(tokens.shape[1]), k, v)[0]
    with torch.no_grad():
        ref = hf(tokens).logits
    assert (ours - ref).abs().max().item() < 1e-4  # fp32, same math in a different op order


def test_random_weights_are_seeded(make_spec):
    def digest(seed: int) -> str:
        dec = build_model(make_spec(weights={"source": "random", "seed": seed}), ".")
        h = hashlib.sha256()
        for name, t in dec.state_dict().items():
            h.update(name.encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    assert digest(0) == digest(0)
    assert digest(0) != digest(1)


def test_random_init_statistics(make_spec):
    dec = build_model(make_spec({"norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True}}),
                      ".")
    sd = dec.state_dict()
    w = sd["layers.0.attn.q.weight"].numpy()
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    assert np.all(sd["norm.weight"].numpy() == 0.0)  # unit offset: 0 means a scale of 1
    assert not torch.equal(sd["layers.0.attn.q.weight"], sd["layers.1.attn.q.weight"])
