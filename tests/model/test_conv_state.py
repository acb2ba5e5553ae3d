"""LFM2's short convolution in omnic's decoder: its state against a whole-sequence computation,
and a run from position 0 starting over whatever state the caller kept."""

from __future__ import annotations

import pytest

from tiny_specs import TINY_SPEC, make_resolved_spec

torch = pytest.importorskip("torch")

HYBRID = {"n_layers": 3, "qk_norm": True, "short_conv": {"kernel": 3},
          "layer_pattern": ["short_conv", "full", "short_conv"]}


@pytest.fixture(scope="module")
def decoder():
    from omnic.model import build_model

    spec = make_resolved_spec(TINY_SPEC["model"], HYBRID, weights={"source": "random", "seed": 5})
    return build_model(spec, None).eval()


def _steps(decoder, tokens, k, v, start=0):
    out = []
    for i, t in enumerate(tokens):
        logits, k, v = decoder(torch.tensor([[t]]), torch.tensor([start + i]), k, v)
        out.append(logits[0, -1])
    return torch.stack(out), k, v


def test_token_by_token_equals_the_whole_prompt(decoder):
    prompt = [5, 80, 3, 200, 17, 42, 9]
    with torch.no_grad():
        whole = decoder(torch.tensor([prompt]), torch.arange(len(prompt)),
                        *decoder.empty_cache())[0][0]
        steps, k, _ = _steps(decoder, prompt, *decoder.empty_cache())
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-5)
    assert k[0].shape == k[2].shape == (1, 64, 2)  # kernel - 1 values per channel


def test_a_run_from_position_zero_ignores_the_state_left_behind(decoder):
    first, second = [5, 80, 3, 200], [17, 42, 9]
    with torch.no_grad():
        fresh, _, _ = _steps(decoder, second, *decoder.empty_cache())
        _, k, v = _steps(decoder, first, *decoder.empty_cache())
        # a runner that keeps its buffers and starts a new prompt at position 0 (as ExecuTorch's
        # runner does on reset): the KV slots are overwritten, the conv state must not leak in
        again, _, _ = _steps(decoder, second, k, v)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
