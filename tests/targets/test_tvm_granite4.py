"""Granite 4's Mamba-2 layers on TVM: the convolution state and the recurrent state written in
place by the kernels of omnic/targets/tvm/kernels/mamba2.py, beside the attention layer's cache.

- The kernels alone, in a Relax VM called as llm_relax.py calls them, against the torch module
  (omnic.model.modules.mamba2.Mamba2, its one-chunk parallel form: an independent computation of
  the same recurrence). The states start random, and a prefill is followed by decode steps and
  another multi-token call on the same state tensors. The states the kernels wrote must equal the
  module's next states, and the layer's output (y through the gated norm and out_proj) its
  output. The op's eager body (llm_graph.mamba2_scan) must equal the module too.
- The tiny transformers Granite 4.0-H (tests/hf_checkpoints.py: mamba, mamba, attention, mamba)
  imported with `omnic import` and compiled at fp32 and at int4 (one build each). The fp32
  library on the Relax VM must equal transformers: prefill logits within 1e-4 and its 16 greedy
  tokens, through prefill then 16 one-token decode calls. Both pass their golden check, the int4
  one with in_proj and out_proj read by the packed int4 matmul kernels.

Tolerances: 1e-4 against transformers, the fp32 tolerance of the other importer tests. 1e-5
between the kernels and the module: both are float32 sums of the same terms in another order
(the module's decays come from exp of summed log-decays, the kernels' are multiplied token by
token). A wrong group, a state not kept between calls or a decay off by one token moves the
outputs by ~1e-1.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import import_checkpoint, scheme_builds  # noqa: E402
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
MAMBA_LAYERS = 3  # hf_checkpoints' granite4: mamba, mamba, attention, mamba


@pytest.fixture(scope="module")
def granite4(tmp_path_factory):
    """(the tiny checkpoint's folder, the spec `omnic import --targets tvm` wrote for it)."""
    return import_checkpoint("granite4", tmp_path_factory.mktemp("granite4"), "tvm")


@pytest.fixture(scope="module")
def compiled(granite4, tmp_path_factory):
    """scheme -> the pipeline's CompileResult for the imported spec at that scheme (built once)."""
    return scheme_builds(granite4[1], tmp_path_factory, device=HOST)


@pytest.mark.parametrize("scheme", ["fp32", "int4"])
def test_the_artifact_passes_its_golden_check(compiled, scheme):
    from omnic.golden.metrics import GREEDY_MATCH

    result = compiled(scheme)
    a = tvm_artifact(result)
    assert result.exit_code == 0
    assert a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0
    calls = a.details["kernel_calls"]
    assert calls["mamba2_conv"] == calls["mamba2_scan"] == MAMBA_LAYERS
    assert calls["attention"] == 1
    inputs = a.signature["inputs"]
    assert inputs["k_cache.0"]["shape"] == [1, 4 * 32 + 2 * 2 * 16, 3]  # x | B | C, kernel - 1
    assert inputs["v_cache.0"]["shape"] == [1, 4, 32, 16]  # heads, head_dim, d_state
    if scheme == "int4":  # the mixer's projections are packed matmuls like any other linear
        for i in (0, 1, 3):
            for proj in ("in_proj", "out_proj"):
                assert a.quantization["packed"][f"layers.{i}.ssm.{proj}.weight"].startswith(
                    "int4 g32")
        assert calls["linear"] == 2 * MAMBA_LAYERS + 4 + 3 * 4 + 1  # + attn, ffns, head


def test_fp32_equals_transformers(granite4, compiled):
    from omnic.targets.tvm.target import TvmRunner

    hf_dir, _ = granite4
    result = compiled("fp32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        ref_logits = hf(ids).logits[0].numpy()
        hf.generation_config.eos_token_id = None
        ref_tokens = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS,
                                 do_sample=False, pad_token_id=258)[0, len(PROMPT):].tolist()
    runner = TvmRunner(result.out_dir / tvm_artifact(result).path, num_threads=1)
    logits = runner.forward(np.array(PROMPT))
    assert np.abs(logits - ref_logits).max() < ATOL
    tokens = [int(logits[-1].argmax())]
    for _ in range(STEPS - 1):  # decode: both states carry the past between calls
        tokens.append(int(runner.forward(np.array(tokens[-1:]))[-1].argmax()))
    assert tokens == ref_tokens


# the kernel case: heads, head_dim, d_state, groups, kernel, d_model
SHAPE = (4, 8, 16, 2, 4, 32)


@functools.lru_cache(maxsize=None)
def _vm(heads: int, head_dim: int, d_state: int, groups: int, kernel: int):
    """main(xbc, dt, weight, bias, A_log, D, dt_bias, conv_state, ssm_state) -> y: the two
    kernels called as llm_relax.Kernels._mamba2 calls them, compiled for this CPU."""
    from tvm import relax

    from omnic.targets.tvm.kernels.mamba2 import conv_kernel, scan_kernel

    width = heads * head_dim + 2 * groups * d_state
    t = tvm.tirx.Var("t", "int64")
    f32 = lambda *shape: relax.TensorType(shape, "float32")  # noqa: E731
    conv_ty, ssm_ty = f32(1, width, kernel - 1), f32(1, heads, head_dim, d_state)
    params = [relax.Var("xbc", f32(1, t, width)), relax.Var("dt", f32(1, t, heads)),
              relax.Var("weight", f32(width, 1, kernel)), relax.Var("bias", f32(width)),
              *(relax.Var(n, f32(heads)) for n in ("A_log", "D", "dt_bias")),
              relax.Var("conv_state", conv_ty), relax.Var("ssm_state", ssm_ty)]
    xbc, dt, weight, bias, a_log, d, dt_bias, conv_state, ssm_state = params
    return conv_then_mixer_vm(
        params, conv_kernel(width, kernel), [xbc, conv_state, weight, bias],
        [conv_ty, f32(1, t, width)], scan_kernel(heads, head_dim, d_state, groups),
        [dt, a_log, d, dt_bias, ssm_state], [ssm_ty, f32(1, t, heads * head_dim)])


def _module():
    """A Mamba2 layer of SHAPE with random weights (decays from fast to slow, D and dt_bias of
    both signs) and random starting states."""
    from omnic.model.modules.mamba2 import Mamba2

    heads, head_dim, d_state, groups, kernel, d_model = SHAPE
    torch.manual_seed(0)
    m = Mamba2(d_model, heads, head_dim, d_state, groups, kernel, True, 1e-6).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        m.A_log.copy_(torch.linspace(-2.0, 1.0, heads))
    conv, ssm = m.empty_state(1, torch.float32)
    return m, torch.randn(conv.shape), torch.randn(ssm.shape)


def test_the_kernels_write_both_states_in_place_as_the_module_computes_them():
    from omnic.targets.tvm.llm_graph import mamba2_scan

    m, conv_state, ssm_state = _module()
    heads, head_dim, d_state, groups, kernel, d_model = SHAPE
    vm = _vm(heads, head_dim, d_state, groups, kernel)
    dev = tvm.cpu()
    weights = [tvm.runtime.tensor(p.detach().numpy(), dev)
               for p in (m.conv.weight, m.conv.bias, m.A_log, m.D, m.dt_bias)]
    states = [tvm.runtime.tensor(s.numpy(), dev) for s in (conv_state, ssm_state)]
    for n in (5, 1, 1, 3, 1):  # prefill, decode steps, a multi-token call
        x = torch.randn(1, n, d_model)
        with torch.no_grad():
            ref, conv_state, ssm_state = m(x, conv_state, ssm_state)
            z, xbc, dt = m.in_proj(x).split([m.inner, m.channels, m.heads], dim=-1)
            eager = mamba2_scan(xbc, dt, m.conv.weight, m.conv.bias, m.A_log, m.D, m.dt_bias,
                                *(torch.from_numpy(s.numpy()) for s in states))
            y = torch.from_numpy(vm["main"](tvm.runtime.tensor(xbc.numpy(), dev),
                                            tvm.runtime.tensor(dt.numpy(), dev),
                                            *weights, *states).numpy())
            out, out_eager = (m.out_proj(m.norm(v, z)) for v in (y, eager))
        np.testing.assert_allclose(states[0].numpy(), conv_state.numpy(), rtol=0, atol=0)
        np.testing.assert_allclose(states[1].numpy(), ssm_state.numpy(), rtol=0,
                                   atol=KERNEL_ATOL)
        np.testing.assert_allclose(y.numpy(), eager.numpy(), rtol=0, atol=KERNEL_ATOL)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=0, atol=KERNEL_ATOL)
        np.testing.assert_allclose(out_eager.numpy(), ref.numpy(), rtol=0, atol=KERNEL_ATOL)


def test_the_host_build_takes_mamba2_and_the_gpu_builds_refuse_it(granite4, tmp_path, capsys):
    assert_gpu_builds_refuse(granite4[1], tmp_path, capsys, "mamba2")
