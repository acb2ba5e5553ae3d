"""Qwen3.5's Gated DeltaNet layers on TVM: the convolution state and the recurrent state written in
place by the kernels of omnic/targets/tvm/kernels/deltanet.py (and mamba2.py's convolution),
beside the gated attention layer's cache.

- The kernels alone, in a Relax VM called as llm_relax.py calls them, against transformers' own
  reference functions (`causal_conv1d_update`, `torch_recurrent_gated_delta_rule` with its
  in-kernel L2 norm): random starting states, then calls of several lengths on the same state
  tensors. key_dim differs from value_dim and two value heads share a key head, so a transposed
  state or a wrong key head shows. The op's eager body (llm_graph.gated_deltanet) must agree too.
- The tiny transformers Qwen3.5 (tests/hf_checkpoints.py: 3 DeltaNet layers, then one attention
  layer with the sigmoid output gate, q/k norms and partial rotary) imported with `omnic import`
  and compiled at fp32 and at int4 (one build each). The fp32 library on the Relax VM must equal
  transformers at every position of a prefill followed by one-token decode calls (the logits
  within 1e-4) and give its 16 greedy tokens. Both builds pass their golden check, the int4 one
  with the DeltaNet projections read by the packed int4 matmul kernels.

Tolerances: 1e-4 against transformers, the fp32 tolerance of the other importer tests; 1e-5
between the kernels and transformers' recurrence (the same float32 terms summed in another
order). A wrong key head, a state not kept between calls or a missing output gate moves the
outputs by ~1e-1.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import import_checkpoint, scheme_builds, transformers_greedy  # noqa: E402
from tvm_state_kernels import (  # noqa: E402
    HOST,
    assert_gpu_builds_refuse,
    conv_then_mixer_vm,
    tvm_artifact,
)

pytestmark = pytest.mark.slow

ATOL = 1e-4
KERNEL_ATOL = 1e-5
STEPS = 16
PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64]
DELTANET, ATTENTION = [0, 1, 2], [3]  # hf_checkpoints' qwen3_5
KEY_HEADS, VALUE_HEADS, KEY_DIM, VALUE_DIM, KERNEL = 2, 4, 16, 16, 4
CHANNELS = 2 * KEY_HEADS * KEY_DIM + VALUE_HEADS * VALUE_DIM  # q | k | v


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    """(the tiny checkpoint's folder, the spec `omnic import --targets tvm` wrote for it)."""
    return import_checkpoint("qwen3_5", tmp_path_factory.mktemp("qwen3_5"), "tvm")


@pytest.fixture(scope="module")
def compiled(qwen35, tmp_path_factory):
    """scheme -> the pipeline's CompileResult for the imported spec (one build each)."""
    return scheme_builds(qwen35[1], tmp_path_factory, device=HOST)


@pytest.mark.parametrize("scheme", ["fp32", "int4"])
def test_the_artifact_passes_its_golden_check(compiled, scheme):
    from omnic.golden.metrics import GREEDY_MATCH

    result = compiled(scheme)
    a = tvm_artifact(result)
    assert result.exit_code == 0
    assert a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0
    calls = a.details["kernel_calls"]
    assert calls["deltanet_conv"] == calls["deltanet_rule"] == len(DELTANET)
    assert calls["attention"] == len(ATTENTION)
    inputs = a.signature["inputs"]
    for i in DELTANET:
        assert inputs[f"k_cache.{i}"]["shape"] == [1, CHANNELS, KERNEL - 1]
        assert inputs[f"v_cache.{i}"]["shape"] == [1, VALUE_HEADS, KEY_DIM, VALUE_DIM]
    if scheme == "int4":  # the mixer's projections are packed matmuls like any other linear
        packed = a.quantization["packed"]
        for i in DELTANET:
            for proj in ("qkv", "z", "out_proj"):
                assert packed[f"layers.{i}.deltanet.{proj}.weight"].startswith("int4 g32")
            for proj in ("b", "a"):  # one row per value head: kept float (explain.py)
                assert f"layers.{i}.deltanet.{proj}.weight" not in packed
        assert packed["layers.3.attn.gate.weight"].startswith("int4 g32")
        # per DeltaNet layer qkv, z, out_proj; q, k, v, gate, o; the FFNs; the tied head
        assert calls["linear"] == 3 * len(DELTANET) + 5 * len(ATTENTION) + 3 * 4 + 1


def test_fp32_equals_transformers(qwen35, compiled):
    from omnic.targets.tvm.target import TvmRunner

    tokens, ref = transformers_greedy(qwen35[0], PROMPT, STEPS)
    runner = TvmRunner(compiled("fp32").out_dir / tvm_artifact(compiled("fp32")).path,
                       num_threads=1)
    logits = [runner.forward(np.array(PROMPT))]
    ours = [int(logits[0][-1].argmax())]
    for _ in range(STEPS - 1):  # decode: both states carry the past between calls
        logits.append(runner.forward(np.array(ours[-1:])))
        ours.append(int(logits[-1][-1].argmax()))
    got = np.concatenate(logits)
    assert np.abs(got - ref).max() < ATOL
    assert ours == tokens


@functools.lru_cache(maxsize=None)
def _vm(key_heads: int, value_heads: int, key_dim: int, value_dim: int, kernel: int):
    """main(qkv, a, b, weight, A_log, dt_bias, conv_state, state) -> o: the two kernels called
    as llm_relax.Kernels._deltanet calls them, compiled for this CPU."""
    from tvm import relax

    from omnic.targets.tvm.kernels.deltanet import rule_kernel
    from omnic.targets.tvm.kernels.mamba2 import conv_kernel

    width = 2 * key_heads * key_dim + value_heads * value_dim
    t = tvm.tirx.Var("t", "int64")
    f32 = lambda *shape: relax.TensorType(shape, "float32")  # noqa: E731
    conv_ty, state_ty = f32(1, width, kernel - 1), f32(1, value_heads, key_dim, value_dim)
    params = [relax.Var("qkv", f32(1, t, width)), relax.Var("a", f32(1, t, value_heads)),
              relax.Var("b", f32(1, t, value_heads)), relax.Var("weight", f32(width, 1, kernel)),
              relax.Var("A_log", f32(value_heads)), relax.Var("dt_bias", f32(value_heads)),
              relax.Var("conv_state", conv_ty), relax.Var("state", state_ty)]
    qkv, a, b, weight, a_log, dt_bias, conv_state, state = params
    no_bias = relax.const(np.zeros(width, dtype="float32"))
    return conv_then_mixer_vm(
        params, conv_kernel(width, kernel), [qkv, conv_state, weight, no_bias],
        [conv_ty, f32(1, t, width)], rule_kernel(key_heads, value_heads, key_dim, value_dim),
        [a, b, a_log, dt_bias, state], [state_ty, f32(1, t, value_heads * value_dim)])


def test_the_kernels_write_both_states_in_place_as_transformers_computes_them():
    import torch.nn.functional as F
    from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

    from omnic.targets.tvm.llm_graph import gated_deltanet

    kh, vh, dk, dv, kernel = 2, 4, 8, 16, 4  # key_dim != value_dim: a transposed S shows
    width, kw = 2 * kh * dk + vh * dv, kh * dk
    vm, dev = _vm(kh, vh, dk, dv, kernel), tvm.cpu()
    torch.manual_seed(0)
    weight = torch.randn(width, 1, kernel) * 0.5
    a_log, dt_bias = torch.linspace(-2.0, 1.5, vh), torch.randn(vh)  # fast to slow decays
    conv_state, state = torch.randn(1, width, kernel - 1), torch.randn(1, vh, dk, dv) * 0.3
    tv = lambda x: tvm.runtime.tensor(x.numpy(), dev)  # noqa: E731
    states = [tv(conv_state), tv(state)]
    for n in (5, 1, 1, 3, 1):  # prefill, decode steps, a multi-token call
        qkv, a, b = torch.randn(1, n, width), torch.randn(1, n, vh) * 2, torch.randn(1, n, vh)
        a[0, 0, 0] = 30.0  # softplus' linear branch
        eager = gated_deltanet(qkv, a, b, weight, a_log, dt_bias,
                               *(torch.from_numpy(s.numpy()) for s in states))
        o = vm["main"](*map(tv, (qkv, a, b, weight, a_log, dt_bias)), *states).numpy()
        xc = hf.causal_conv1d_update(qkv.transpose(1, 2).contiguous(), conv_state,
                                     weight.squeeze(1), None, "silu").transpose(1, 2)
        q, k, v = xc.split([kw, kw, vh * dv], dim=-1)
        ref, state = hf.torch_recurrent_gated_delta_rule(
            q.reshape(1, n, kh, dk), k.reshape(1, n, kh, dk), v.reshape(1, n, vh, dv),
            g=-a_log.exp() * F.softplus(a + dt_bias), beta=b.sigmoid(), initial_state=state,
            output_final_state=True, use_qk_l2norm_in_kernel=True)
        ref = ref.reshape(1, n, vh * dv).numpy()
        np.testing.assert_allclose(states[0].numpy(), conv_state.numpy(), rtol=0, atol=0)
        np.testing.assert_allclose(states[1].numpy(), state.numpy(), rtol=0, atol=KERNEL_ATOL)
        np.testing.assert_allclose(o, ref, rtol=0, atol=KERNEL_ATOL)
        np.testing.assert_allclose(eager.numpy(), ref, rtol=0, atol=KERNEL_ATOL)


def test_the_host_build_takes_gated_deltanet_and_the_gpu_builds_refuse_it(qwen35, tmp_path,
                                                                           capsys):
    assert_gpu_builds_refuse(qwen35[1], tmp_path, capsys, "gated_deltanet")
