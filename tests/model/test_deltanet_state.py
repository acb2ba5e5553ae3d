"""Qwen3.5's Gated DeltaNet layer in omnic's decoder: its one-chunk parallel form against the
recurrence token by token and prompts cut in slices, eager calls longer than a chunk, the form
torch.export keeps (a fixed count of factors for a symbolic token count), a fixed-size state, and
a run from position 0 starting over whatever state the caller kept."""

from __future__ import annotations

import pytest

from tiny_specs import TINY_SPEC, make_resolved_spec

torch = pytest.importorskip("torch")

from recurrent_decoder import (  # noqa: E402
    assert_parallel_form_equals_recurrence_and_slices,
    assert_position_zero_ignores_the_state_left_behind,
    run_pieces,
)

HYBRID = {"n_layers": 3, "layer_pattern": ["gated_deltanet", "full", "gated_deltanet"],
          "context_length": 256, "attn_output_gate": True, "qk_norm": True,
          "gated_deltanet": {"key_heads": 2, "value_heads": 4, "key_dim": 16, "value_dim": 8,
                             "kernel": 4}}
PROMPT = [5, 80, 3, 200, 17, 42, 9, 11, 250, 64]


@pytest.fixture(scope="module")
def decoder():
    from omnic.model import build_model

    spec = make_resolved_spec(TINY_SPEC["model"], HYBRID, weights={"source": "random", "seed": 5})
    decoder = build_model(spec, None).eval()
    with torch.no_grad():  # decays that differ per head, away from 0 and from 1, betas near 1,
        # and streams large enough for the state to matter (the 0.02 init leaves it near zero)
        for block in decoder.layers:
            if block.deltanet is not None:
                dn = block.deltanet
                dn.A_log.copy_(torch.linspace(-2.0, 0.0, dn.value_heads))
                dn.qkv.weight.mul_(20.0)
                dn.conv.weight.mul_(20.0)
                dn.b.weight.mul_(50.0)
    return decoder


def test_the_parallel_form_equals_the_recurrence_and_slices_of_the_prompt(decoder):
    # the state does not grow with the tokens: the convolution's last 3 inputs of q, k and v
    # (2 x 2 x 16 + 4 x 8 channels) and 4 value heads x a 16 x 8 matrix
    assert_parallel_form_equals_recurrence_and_slices(decoder, PROMPT, [0, 2], (1, 96, 3),
                                                      (1, 4, 16, 8))


def test_a_prompt_longer_than_a_chunk_equals_the_recurrence(decoder):
    from omnic.model.modules.deltanet import CHUNK

    prompt = [(7 * i + 3) % 320 for i in range(CHUNK + 37)]  # two slices in an eager call
    with torch.no_grad():
        whole, _, v = run_pieces(decoder, [prompt], *decoder.empty_cache())
        steps, _, v1 = run_pieces(decoder, [[t] for t in prompt], *decoder.empty_cache())
    torch.testing.assert_close(steps, whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v[0], v1[0], rtol=1e-4, atol=1e-4)


def test_the_exported_form_equals_the_eager_one(decoder):
    """Under torch.export the token count is symbolic: the triangular inverse takes its fixed
    count of factors (from the context), which must give what the exact count gives."""
    from torch.export import Dim

    dn = decoder.layers[0].deltanet
    assert dn.max_levels == 8  # ceil(log2(256))
    x = torch.randn(1, 40, 64) * 3.0
    conv, state = dn.empty_state(1, torch.float32)
    state = state + torch.randn(state.shape) * 0.5  # a state from earlier tokens
    ep = torch.export.export(dn, (x[:, :4], conv, state),
                             dynamic_shapes=({1: Dim("t", min=1, max=256)}, None, None))
    with torch.no_grad():
        want = dn(x, conv, state)
        got = ep.module()(x, conv, state)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_run_from_position_zero_ignores_the_state_left_behind(decoder):
    assert_position_zero_ignores_the_state_left_behind(decoder, PROMPT)


def _recurrence(q, k, v, beta, g):
    """The gated delta rule token by token in float64 (transformers'
    torch_recurrent_gated_delta_rule, q already normalised and scaled)."""
    q, k, v, beta, g = (x.double() for x in (q, k, v, beta, g))
    s = torch.zeros(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=torch.float64)
    outs = []
    for t in range(q.shape[2]):
        s = s * g[:, :, t].exp()[..., None, None]
        delta = (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", s, k[:, :, t])) * beta[:, :, t, None]
        s = s + k[:, :, t, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, :, t]))
    return torch.stack(outs, 2)


def test_one_long_call_stays_exact_when_the_keys_share_a_direction():
    """The exported graph runs a whole prompt as one chunk: its triangular inverse must stay
    exact over hundreds of tokens whose keys are far from orthogonal (real keys are; the
    tiny random checkpoint's are not), with betas near 1 and a slow decay."""
    from omnic.model.modules.deltanet import GatedDeltaNet

    g_ = torch.Generator().manual_seed(0)
    heads, dim, t = 2, 32, 256
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    shared = torch.randn(1, heads, 1, dim, generator=g_)
    k = unit(0.8 * shared + 0.6 * torch.randn(1, heads, t, dim, generator=g_))
    q = unit(0.8 * shared + 0.6 * torch.randn(1, heads, t, dim, generator=g_)) * dim ** -0.5
    v = torch.randn(1, heads, t, dim, generator=g_)
    beta = torch.sigmoid(1.0 + torch.randn(1, heads, t, generator=g_))
    g = -0.01 * torch.rand(1, heads, t, generator=g_)
    dn = GatedDeltaNet(64, heads, heads, dim, dim, 4, 1e-6, max_tokens=t)
    with torch.no_grad():
        o, _ = dn._rule(q, k, v, beta, g, torch.zeros(1, heads, dim, dim))
    want = _recurrence(q, k, v, beta, g)
    assert want.abs().max() > 0.1
    assert (o.double() - want).abs().max() < 1e-4
