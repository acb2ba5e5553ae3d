"""Granite 4's Mamba-2 layer in omnic's decoder: its parallel form over a whole prompt against
the recurrence token by token and prompts cut in slices, a fixed-size state, and a run from
position 0 starting over whatever state the caller kept."""

from __future__ import annotations

import pytest

from tiny_specs import TINY_SPEC, make_resolved_spec

torch = pytest.importorskip("torch")

from recurrent_decoder import (  # noqa: E402
    assert_parallel_form_equals_recurrence_and_slices,
    assert_position_zero_ignores_the_state_left_behind,
)

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


def test_the_parallel_form_equals_the_recurrence_and_slices_of_the_prompt(decoder):
    # the state does not grow with the tokens: the convolution's last 3 inputs of x, B and C
    # (4 x 16 + 2 x 2 x 8 channels) and 4 heads x 16 channels x 8 state values
    assert_parallel_form_equals_recurrence_and_slices(decoder, PROMPT, [0, 2], (1, 96, 3),
                                                      (1, 4, 16, 8))


def test_a_run_from_position_zero_ignores_the_state_left_behind(decoder):
    assert_position_zero_ignores_the_state_left_behind(decoder, PROMPT)
