"""KV-cache decoding equals full-sequence recomputation at every step, through both entry points
and through the TorchRunner + greedy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnic.model import build_model
from omnic.runtime.generate import greedy
from omnic.runtime.torch_runner import TorchRunner

SEQ = [256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 5, 9, 200, 17, 3, 64]

CASES = {
    "gqa": {},
    "mqa_window_even": {"n_kv_heads": 1, "sliding_window": {"size": 5, "layers": "even"}},
    "gemma2_like": {
        "ffn": {"kind": "geglu", "hidden": 96},
        "norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True},
        "scale_embeddings": True, "post_norms": True, "attn_softcap": 50.0, "final_softcap": 30.0,
        "sliding_window": {"size": 4, "layers": "all"},
    },
    "moe_layernorm": {
        "moe": {"experts": 4, "top_k": 2, "shared_experts": 1},
        "norm": {"kind": "layernorm", "eps": 1e-5},
        "qkv_bias": True, "qk_norm": True,
    },
}


@pytest.fixture(scope="module", params=sorted(CASES))
def decoder(request, make_spec):
    return build_model(make_spec(CASES[request.param]), ".")


def _full(decoder, ids) -> torch.Tensor:
    k, v = decoder.empty_cache()
    return decoder(torch.tensor([ids]), torch.arange(len(ids)), k, v)[0][0]


def test_static_cache_equals_recompute(decoder):
    prompt = 6
    k, v = decoder.empty_cache()
    logits, k, v = decoder(torch.tensor([SEQ[:prompt]]), torch.arange(prompt), k, v)
    torch.testing.assert_close(logits[0], _full(decoder, SEQ[:prompt]), rtol=0, atol=1e-5)
    for t in range(prompt, len(SEQ)):
        step, k, v = decoder(torch.tensor([[SEQ[t]]]), torch.tensor([t]), k, v)
        full = _full(decoder, SEQ[: t + 1])[-1]
        torch.testing.assert_close(step[0, 0], full, rtol=0, atol=1e-5)


def test_concat_cache_equals_recompute(decoder):
    c = decoder.config
    past = [torch.zeros(1, c.n_kv_heads, 0, c.head_dim) for _ in range(c.n_layers)]
    pk, pv = past, list(past)
    pos = 0
    for chunk in (SEQ[:5], SEQ[5:6], SEQ[6:9], *[[x] for x in SEQ[9:]]):
        n = len(chunk)
        logits, pk, pv = decoder.forward_concat(
            torch.tensor([chunk]), torch.ones(1, pos + n, dtype=torch.long),
            torch.arange(pos, pos + n)[None], pk, pv,
        )
        pos += n
        assert pk[0].shape[2] == pos
        torch.testing.assert_close(logits[0], _full(decoder, SEQ[:pos])[-n:], rtol=0, atol=1e-5)


def test_concat_left_padding_is_ignored(decoder):
    """A left-padded row (onnxruntime-genai batching) gives the unpadded row's logits."""
    c = decoder.config
    ids = SEQ[:7]
    padded = [0, 0, 0] + ids
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    pos = torch.tensor([[0, 0, 0] + list(range(7))])
    empty = [torch.zeros(1, c.n_kv_heads, 0, c.head_dim) for _ in range(c.n_layers)]
    logits = decoder.forward_concat(torch.tensor([padded]), mask, pos, empty, empty)[0]
    torch.testing.assert_close(logits[0, 3:], _full(decoder, ids), rtol=0, atol=1e-5)


def test_greedy_runner_equals_recompute(decoder):
    runner = TorchRunner(decoder)
    prompt = SEQ[:8]
    generated, prompt_logits = greedy(runner, prompt, steps=10)
    assert (prompt_logits.dtype == np.float32
            and prompt_logits.shape == (8, decoder.config.vocab_size))
    ids = list(prompt)
    for _ in range(10):  # greedy by full recomputation, no cache
        ids.append(int(_full(decoder, ids)[-1].argmax()))
    assert generated == ids[len(prompt):]
    np.testing.assert_allclose(prompt_logits, _full(decoder, prompt).numpy(), rtol=0, atol=1e-5)
    # reset() really starts over
    again, _ = greedy(runner, prompt, steps=10)
    assert again == generated


def test_runner_with_a_cache_cut_to_the_positions_it_sees_gives_the_same_logits(decoder):
    """TorchRunner(positions=N): the golden reference's short cache (not context_length)."""
    full, short = TorchRunner(decoder), TorchRunner(decoder, positions=len(SEQ))
    # full layers hold the positions seen instead of the context; sliding layers keep their
    # window's ring either way (here shorter than the sequence)
    c = decoder.config
    for i, (k_short, k_full) in enumerate(zip(short.k_cache, full.k_cache)):
        window = c.window_of(i)
        assert (k_short.shape[2], k_full.shape[2]) == (
            (len(SEQ), c.context_length) if window is None else (window, window))
    # not bit-equal: softmax reductions run over a different number of masked slots (1.8e-7)
    np.testing.assert_allclose(short.forward(np.array(SEQ[:6])), full.forward(np.array(SEQ[:6])),
                               rtol=0, atol=1e-5)
    for t in SEQ[6:]:
        np.testing.assert_allclose(short.forward(np.array([t])), full.forward(np.array([t])),
                                   rtol=0, atol=1e-5)
