"""The per-layer table in the torch decoder: window-sized ring caches for sliding layers, and
the table's rows reaching the blocks.

The independent reference for the ring is the growing-cache entry `forward_concat`, which
attends over every key with an explicit (causal & window) mask and keeps no ring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnic.model import build_model
from omnic.runtime.torch_runner import TorchRunner

GEMMA3ISH = {
    "n_layers": 6, "layer_pattern": "2 sliding : 1 full", "sliding_window": {"size": 5},
    "rope": {"theta": 1e6, "sliding": {"theta": 1e4}}, "ffn": {"kind": "geglu", "hidden": 128},
    "qk_norm": True, "post_norms": True,
}
TOKENS = [3, 17, 99, 250, 7, 7, 301, 45, 12, 88, 400, 6, 19, 200, 31, 5, 77, 123, 9, 64]


def _decoder(make_spec, model: dict):
    spec = make_spec(model)
    decoder = build_model(spec, ".")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # weights large enough that every position's keys matter
        for p in decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return decoder


def _concat_logits(decoder, tokens):
    """Every position's logits through the growing-cache entry (no ring, one call)."""
    c = decoder.config
    ids = torch.tensor([tokens])
    empty = [torch.zeros(1, c.n_kv_heads, 0, c.head_dim) for _ in range(c.n_layers)]
    with torch.no_grad():
        logits, _, _ = decoder.forward_concat(ids, torch.ones_like(ids),
                                              torch.arange(len(tokens))[None], empty, empty)
    return logits[0].numpy()


@pytest.mark.parametrize("chunks", [[20], [3, 1, 1, 6, 1, 8], [12, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_ring_cache_equals_attention_over_every_key(make_spec, chunks):
    decoder = _decoder(make_spec, GEMMA3ISH)
    assert decoder.cache_lengths() == [5, 5, 64, 5, 5, 64]  # the sliding layers keep 5 slots
    runner = TorchRunner(decoder)
    assert [k.shape[2] for k in runner.k_cache] == [5, 5, 64, 5, 5, 64]
    out, at = [], 0
    for n in chunks:  # prefills longer than the window, then decode steps across its edge
        out.append(runner.forward(np.array(TOKENS[at:at + n])))
        at += n
    ours = np.concatenate(out)
    ref = _concat_logits(decoder, TOKENS[:at])
    assert np.abs(ref).max() > 1.0
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


def test_a_full_length_cache_still_works_for_sliding_layers(make_spec):
    """A caller that allocates context_length for every layer (no ring) gets the same logits."""
    decoder = _decoder(make_spec, GEMMA3ISH)
    c = decoder.config
    k = [torch.zeros(1, c.n_kv_heads, c.context_length, c.head_dim) for _ in range(c.n_layers)]
    v = [t.clone() for t in k]
    with torch.no_grad():
        logits, _, _ = decoder(torch.tensor([TOKENS]), torch.arange(len(TOKENS)), k, v)
    np.testing.assert_allclose(logits[0].numpy(), _concat_logits(decoder, TOKENS), atol=2e-5)


def test_the_ring_drops_what_the_window_cannot_see(make_spec):
    """Break check: the window matters (a model with no window gives other logits), and the
    ring's logits differ from the full ones once the prompt is longer than the window."""
    windowed = _decoder(make_spec, GEMMA3ISH)
    full = _decoder(make_spec, {**GEMMA3ISH, "sliding_window": {"size": 64}})  # hides nothing
    assert full.cache_lengths() == [64] * 6  # a window as long as the context: no ring
    a, b = _concat_logits(windowed, TOKENS), _concat_logits(full, TOKENS)
    np.testing.assert_allclose(a[:5], b[:5], atol=2e-5)  # inside the window: the same
    assert np.abs(a[6:] - b[6:]).max() > 1e-2


def test_table_rows_reach_the_blocks(make_spec):
    decoder = _decoder(make_spec, {"n_layers": 4, "layer_pattern": "3 full : 1 nope",
                        "rope": {"theta": 5e5, "rotary_dim": 8}})
    c = decoder.config
    assert [c.rope_of(i) for i in range(4)] == [(5e5, None, 8)] * 3 + [None]
    assert decoder.rope.cos.shape[-1] == 8 and len(decoder.extra_ropes) == 0
    gemma = _decoder(make_spec, GEMMA3ISH)
    assert [round(r[0]) for r in (gemma.config.rope_of(i) for i in range(3))] == [10000] * 2 + [
        1000000]
    assert len(gemma.extra_ropes) == 1


def test_the_ring_exports_with_a_dynamic_token_count(make_spec):
    """torch.export keeps the prefill length dynamic from 1 to the context with ring caches (no
    slice of the new tokens depends on their count), and the exported program gives the same
    logits as the growing-cache entry over chunks that cross the window's edge."""
    decoder = _decoder(make_spec, GEMMA3ISH)
    k, v = decoder.empty_cache()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, tokens, input_pos, k_cache, v_cache):
            return self.decoder(tokens, input_pos, k_cache, v_cache)

    seq = torch.export.Dim.DYNAMIC
    ep = torch.export.export(Step(), (torch.tensor([TOKENS[:3]]), torch.arange(3), k, v),
                             dynamic_shapes=({1: seq}, {0: seq}, [None] * len(k), [None] * len(v)))
    program = ep.module()
    out, at = [], 0
    for n in (3, 1, 7, 1, 4, 1):
        with torch.no_grad():
            logits, k, v = program(torch.tensor([TOKENS[at:at + n]]), torch.arange(at, at + n),
                                   k, v)
        out.append(logits[0].numpy())
        at += n
    np.testing.assert_allclose(np.concatenate(out), _concat_logits(decoder, TOKENS[:at]),
                               atol=2e-5, rtol=0)
