"""Weight sources: seeded random (per-tensor streams) and an omnic-named safetensors file."""

from __future__ import annotations

import pytest
import torch

from omnic.model import WeightError, build_model


def test_random_tensor_depends_only_on_seed_and_name(make_spec):
    a = build_model(make_spec({"n_layers": 2}), ".").state_dict()
    b = build_model(make_spec({"n_layers": 3, "tie_embeddings": False}), ".").state_dict()
    # Adding a layer or an lm_head does not shift the streams of the other tensors.
    for name in ("embed.weight", "layers.0.attn.q.weight", "layers.1.ffn.down.weight"):
        assert torch.equal(a[name], b[name])


def test_safetensors_source_round_trip(make_spec, tmp_path):
    from safetensors.torch import save_file

    ref = build_model(make_spec(weights={"source": "random", "seed": 7}), ".")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "w16.safetensors")

    got = build_model(make_spec(weights={"source": "safetensors", "path": "w.safetensors"}),
                      tmp_path)
    for k, v in got.state_dict().items():
        assert torch.equal(v, sd[k]), k
    half = build_model(make_spec(weights={"source": "safetensors", "path": "w16.safetensors"}),
                       tmp_path)
    w = half.state_dict()["layers.0.attn.q.weight"]
    assert w.dtype == torch.float32 and torch.equal(
        w, sd["layers.0.attn.q.weight"].to(torch.bfloat16).float())


def test_safetensors_mismatch_names_every_problem(make_spec, tmp_path):
    from safetensors.torch import save_file

    sd = dict(build_model(make_spec(), ".").state_dict())
    sd.pop("layers.1.attn.k.weight")
    sd["layers.0.attn.q.weight"] = torch.zeros(3, 3)
    sd["extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(WeightError) as err:
        build_model(make_spec(weights={"source": "safetensors", "path": "bad.safetensors"}),
                    tmp_path)
    text = str(err.value)
    assert "missing 1: layers.1.attn.k.weight" in text
    assert "unexpected 1: extra.weight" in text
    assert "layers.0.attn.q.weight: (3, 3) != (64, 64)" in text


def test_state_dict_is_the_inventory(make_spec):
    from omnic.spec.inventory import decoder_tensors

    for extra in ({}, {"moe": {"experts": 3, "top_k": 2, "shared_experts": 2, "shared_hidden": 32}},
                  {"norm": {"kind": "layernorm"}, "qkv_bias": True, "qk_norm": True,
                   "post_norms": True,
                   "ffn": {"kind": "gelu", "hidden": 96}, "tie_embeddings": False}):
        spec = make_spec(extra)
        sd = build_model(spec, ".").state_dict()
        inv = decoder_tensors(spec.model)
        assert sorted(sd) == sorted(t.name for t in inv)  # same names (module order differs)
        assert all(tuple(sd[t.name].shape) == t.shape for t in inv)
