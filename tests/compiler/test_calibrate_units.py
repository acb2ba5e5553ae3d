"""The calibrate stage's pieces on tiny random decoders: the statistics it collects, and AWQ's
fold, each against a computation that does not use the code under test."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_specs import TINY_SPEC, make_resolved_spec

torch = pytest.importorskip("torch")


def _decoder(**model):
    from omnic.model import build_model

    spec = make_resolved_spec(TINY_SPEC["model"], {"n_layers": 3, **model},
                              weights={"source": "random", "seed": 3})
    return build_model(spec, None).eval()


def _windows(n=3, t=12, vocab=320, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, t).tolist() for _ in range(n)]


def _logits(decoder, window):
    from omnic.compiler.calibration_stats import _forward  # noqa: F401 (same call, below)

    ids = torch.tensor([window])
    t = ids.shape[1]
    past_k, past_v = decoder.empty_cache(1, length=0)
    with torch.no_grad():
        return decoder.forward_concat(ids, torch.ones(1, t, dtype=torch.int64),
                                      torch.arange(t)[None], past_k, past_v)[0].numpy()


def test_hessians_are_the_inputs_gram_matrices_and_chunks_do_not_change_them():
    from omnic.compiler.calibration_stats import collect, linears

    dec = _decoder()
    names = {f"layers.{i}.{m}.weight" for i in range(3)
             for m in ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.gate", "ffn.up", "ffn.down")}
    mods = linears(dec, names)
    wins = _windows()
    whole = [s for chunk in collect(dec, wins, mods) for s in chunk]
    tiny_budget = [s for chunk in collect(dec, wins, mods, budget=1) for s in chunk]
    # q, k and v share the attention norm's output; gate and up the FFN norm's
    by_key = {s.key: s for s in whole}
    assert by_key["layers.1.attn.q"].consumers == [f"layers.1.attn.{m}.weight" for m in "qkv"]
    assert by_key["layers.2.ffn.gate"].consumers == ["layers.2.ffn.gate.weight",
                                                     "layers.2.ffn.up.weight"]
    assert len(whole) == 3 * 4
    for s in tiny_budget:
        np.testing.assert_allclose(s.hessian(), by_key[s.key].hessian(), rtol=1e-5, atol=1e-5)
    # independently: layer 0's attention input is the embedding through the attention norm
    x = torch.cat([dec.layers[0].attn_norm(dec.embed(torch.tensor(w))) for w in wins]).detach()
    h = (x.T @ x).double().numpy()
    np.testing.assert_allclose(by_key["layers.0.attn.q"].hessian(), h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(by_key["layers.0.attn.q"].abs_mean(),
                               x.abs().mean(0).double().numpy(), rtol=1e-5)
    assert by_key["layers.0.attn.q"].tokens == sum(len(w) for w in wins)


HYBRID = {"qk_norm": True, "short_conv": {"kernel": 3},
          "layer_pattern": ["short_conv", "full", "short_conv"]}  # LFM2's layer kinds
MAMBA2 = {"layer_pattern": ["mamba2", "nope", "mamba2"],  # Granite 4's layer kinds
          "mamba2": {"heads": 4, "head_dim": 16, "d_state": 8, "groups": 2, "kernel": 4}}


def test_a_mamba2_hybrids_projection_inputs_are_collected():
    from omnic.compiler.calibration_stats import collect, linears

    dec = _decoder(**MAMBA2)
    names = {f"layers.{i}.ssm.{m}.weight" for i in (0, 2) for m in ("in_proj", "out_proj")}
    wins = _windows()
    by_key = {s.key: s for chunk in collect(dec, wins, linears(dec, names)) for s in chunk}
    assert sorted(by_key) == [f"layers.{i}.ssm.{m}" for i in (0, 2)
                              for m in ("in_proj", "out_proj")]
    # independently: layer 0's in_proj reads the embedding through the layer's norm
    x = torch.cat([dec.layers[0].attn_norm(dec.embed(torch.tensor(w))) for w in wins]).detach()
    np.testing.assert_allclose(by_key["layers.0.ssm.in_proj"].hessian(),
                               (x.T @ x).double().numpy(), rtol=1e-4, atol=1e-4)


def test_a_hybrids_convolution_inputs_are_collected():
    from omnic.compiler.calibration_stats import collect, linears

    dec = _decoder(**HYBRID)
    names = {f"layers.{i}.conv.{m}.weight" for i in (0, 2) for m in ("in_proj", "out_proj")}
    names |= {f"layers.1.attn.{m}.weight" for m in "qkvo"}
    wins = _windows()
    by_key = {s.key: s for chunk in collect(dec, wins, linears(dec, names)) for s in chunk}
    # q, k and v share one input (keyed by q); each convolution projection has its own
    assert sorted(by_key) == ["layers.0.conv.in_proj", "layers.0.conv.out_proj",
                              "layers.1.attn.o", "layers.1.attn.q",
                              "layers.2.conv.in_proj", "layers.2.conv.out_proj"]
    # independently: layer 0's in_proj reads the embedding through the layer's norm
    x = torch.cat([dec.layers[0].attn_norm(dec.embed(torch.tensor(w))) for w in wins]).detach()
    np.testing.assert_allclose(by_key["layers.0.conv.in_proj"].hessian(),
                               (x.T @ x).double().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", [{}, {"n_kv_heads": 4}, {"ffn": {"kind": "gelu", "hidden": 128}},
                                   {"norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True}},
                                   HYBRID, MAMBA2],
                         ids=["gqa", "mha-v-to-o", "gelu", "unit-offset-norm", "lfm2-hybrid",
                              "granite4-hybrid"])
def test_awq_fold_keeps_the_function(model):
    from omnic.compiler.awq_fold import FoldGroup, apply, fold_groups

    try:
        dec = _decoder(**model)
    except Exception as err:  # a model key this tiny spec cannot take
        pytest.skip(f"{type(err).__name__}: {err}")
    wins = _windows(2)
    before = [_logits(dec, w) for w in wins]
    groups = fold_groups(dec)
    kinds = {g.producer.split(".", 2)[2] for g in groups}
    expect = {"attn_norm", "ffn_norm"} | ({"attn.v"} if dec.config.n_heads == dec.config.n_kv_heads
                                          else set())
    expect |= {"ffn.up"} if dec.config.ffn_kind != "gelu" else set()
    expect |= {"ssm.norm"} if "mamba2" in model else set()
    assert kinds == expect
    if "short_conv" in model:  # a convolution layer's norm makes in_proj's input
        assert FoldGroup("layers.0.attn_norm", ("layers.0.conv.in_proj",)) in groups
    if "mamba2" in model:  # the gated norm makes out_proj's input
        assert FoldGroup("layers.0.ssm.norm", ("layers.0.ssm.out_proj",)) in groups
    modules = dict(dec.named_modules())
    rng = np.random.default_rng(1)
    for g in groups:
        width = modules[g.consumers[0]].in_features
        apply(modules, g, rng.uniform(0.25, 4.0, width).astype(np.float32))
    for w, ref in zip(wins, before):
        got = _logits(dec, w)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # and the weights did move (a fold that did nothing would pass the check above)
    fresh = dict(_decoder(**model).named_modules())
    for g in groups[:2]:  # layer 0's mixer and its FFN
        name = g.consumers[0]
        assert not torch.allclose(modules[name].weight, fresh[name].weight), name
