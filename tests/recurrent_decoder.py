"""Checks shared by the tests of omnic's decoder with state-carrying layers (mamba2,
gated_deltanet): a prompt run whole, token by token and in slices gives the same logits and
states, the states keep a fixed size, and a run from position 0 starts over whatever state the
caller kept (a test helper)."""

from __future__ import annotations

import torch


def run_pieces(decoder, pieces, k, v, start=0):
    """(the logits of every token of `pieces`, fed one piece a call from position `start` on
    the cache k, v, and the cache after them)."""
    out = []
    for piece in pieces:
        logits, k, v = decoder(torch.tensor([piece]), torch.arange(start, start + len(piece)),
                               k, v)
        out.append(logits[0])
        start += len(piece)
    return torch.cat(out), k, v


def assert_parallel_form_equals_recurrence_and_slices(decoder, prompt, layers, conv_shape,
                                                      state_shape) -> None:
    """`prompt` whole (the parallel form), token by token (the recurrence) and cut in slices
    gives the same logits and the same states of the first of `layers`; the states of `layers`
    (the state-carrying ones) keep `conv_shape` and `state_shape`, and the recurrent state was
    written."""
    with torch.no_grad():
        whole, k, v = run_pieces(decoder, [prompt], *decoder.empty_cache())
        steps, k1, v1 = run_pieces(decoder, [[t] for t in prompt], *decoder.empty_cache())
        sliced, k2, v2 = run_pieces(decoder, [prompt[:3], prompt[3:4], prompt[4:]],
                                    *decoder.empty_cache())
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    first = layers[0]
    for a, b in ((k, k1), (v, v1), (k, k2), (v, v2)):
        torch.testing.assert_close(a[first], b[first], rtol=1e-5, atol=1e-5)
    # the state does not grow with the tokens
    for i in layers:
        assert k[i].shape == conv_shape and v[i].shape == state_shape, i
    assert v[first].abs().max() > 0.1  # the layer wrote it


def assert_position_zero_ignores_the_state_left_behind(decoder, prompt) -> None:
    """A runner that keeps its buffers and starts a new prompt at position 0: neither the
    convolution state nor the recurrent state the first half of `prompt` left may leak into
    the second half's logits."""
    first, second = prompt[:5], prompt[5:]
    with torch.no_grad():
        fresh, _, _ = run_pieces(decoder, [second], *decoder.empty_cache())
        _, k, v = run_pieces(decoder, [first], *decoder.empty_cache())
        again, _, _ = run_pieces(decoder, [second], k, v)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
