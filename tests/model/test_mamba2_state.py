"""Granite 4's Mamba-2 layer in omnic's decoder: its parallel form over a whole prompt against
the recurrence token by token and prompts cut in slices, a fixed-size state, and a run from
position 0 starting over whatever state the caller kept."""

from __future__ import annotations

import pytest

from tiny_specs import TINY_SPEC, make_resolved_spec

torch = pytest.importorskip("torch")

HYBRID = {"n_layers": 3, "layer_pattern": ["mamba2", "nope", "mamba2"],
          "mamba2": {"heads": 4, "head_dim": 16, "d_state": 8, "groups": 2, "kernel": 4}}
PROMPT = [5, 80, 3, 200, 17, 42, 9, 11, 250, 64]


@pytest.fixture(scope="module")
def decoder():
    from omnic.model import build_model

    spec = make_resolved_spec(TINY_SPEC["model"], HYBRID, weights={"source": "random", "seed": 5})
    decoder = build_model(spec, None).eval()
    with torch.no_grad():  # decays that differ per head, well away from 0 and from 1, and
        # streams large enough for the state to matter (the 0.02 init leaves it near zero)
        for block in decoder.layers:
            if block.ssm is not None:
                block.ssm.A_log.copy_(torch.linspace(-1.0, 1.0, block.ssm.heads))
                block.ssm.in_proj.weight.mul_(5.0)
                block.ssm.conv.weight.mul_(20.0)
    return decoder


def _run(decoder, pieces, k, v, start=0):
    out = []
    for piece in pieces:
        logits, k, v = decoder(torch.tensor([piece]), torch.arange(start, start + len(piece)),
                               k, v)
        out.append(logits[0])
        start += len(piece)
    return torch.cat(out), k, v


def test_the_parallel_form_equals_the_recurrence_and_slices_of_the_prompt(decoder):
    with torch.no_grad():
        whole, k, v = _run(decoder, [PROMPT], *decoder.empty_cache())
        steps, k1, v1 = _run(decoder, [[t] for t in PROMPT], *decoder.empty_cache())
        sliced, k2, v2 = _run(decoder, [PROMPT[:3], PROMPT[3:4], PROMPT[4:]],
                              *decoder.empty_cache())
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    for a, b in ((k, k1), (v, v1), (k, k2), (v, v2)):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    # the state does not grow with the tokens: the convolution's last 3 inputs of x, B and C
    # (4 x 16 + 2 x 2 x 8 channels) and 4 heads x 16 channels x 8 state values
    assert k[0].shape == k[2].shape == (1, 96, 3)
    assert v[0].shape == v[2].shape == (1, 4, 16, 8)
    assert v[0].abs().max() > 0.1  # the scan wrote it


def test_a_run_from_position_zero_ignores_the_state_left_behind(decoder):
    first, second = PROMPT[:5], PROMPT[5:]
    with torch.no_grad():
        fresh, _, _ = _run(decoder, [second], *decoder.empty_cache())
        _, k, v = _run(decoder, [first], *decoder.empty_cache())
        # a runner that keeps its buffers and starts a new prompt at position 0: neither the
        # convolution state nor the recurrent state may leak in
        again, _, _ = _run(decoder, [second], k, v)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
