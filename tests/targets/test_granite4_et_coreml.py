"""Granite 4.0-H (mamba2 layers around a NoPE attention layer) on ExecuTorch and Core ML.

Both targets keep a mamba2 layer's two states beside the attention layer's KV cache, inside the
program: its convolution state [1, conv_channels, kernel - 1] as `k_cache_{i}` and its recurrent
state [1, heads, head_dim, d_state] as `v_cache_{i}`, rewritten whole each call (ExecuTorch:
mutable buffers of the generic graph; Core ML: MLState).

The checkpoint is tests/hf_checkpoints.py's tiny `GraniteMoeHybridForCausalLM` (4 layers: mamba,
mamba, attention, mamba; 4 ssm heads of 32, 2 groups, d_state 16, kernel 4), imported with
`omnic import` and compiled at fp32 (both targets) and at int4 (ExecuTorch; a Core ML lowering
costs ~30 s, and what int4 adds there, the state updates' reordering after compression, has a
test of its own on a two-state MIL program), one build each. The reference is
transformers itself: the fp32 .pte, run step by step on ExecuTorch's runtime (a 12-token prefill,
then 16 one-token decode calls that carry both states), must give transformers' greedy tokens
with logits within 1e-4 of transformers' (the fp32 row of the ExecuTorch tests; the same float32
math reordered: one-chunk scan against transformers' 4-token chunks, XNNPACK's matmuls;
measured 1.3e-6 on logits up to 1.5, while decoding without the prefill's states moves them by
1.1). int4
(8da4w: int4 weights, int8 dynamic activations) is judged by the pipeline's golden check against
the quantization-exact reference, and must quantize in_proj/out_proj and nothing else of a
mamba2 layer. Core ML cannot run off macOS: its package must declare the states the HF config
implies and pass the structural check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("executorch")
pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from et_coreml_states import (  # noqa: E402
    assert_mlpackage_declares,
    assert_pte_passes_with_state_buffers,
    assert_quantizer_keeps,
)
from hf_checkpoints import artifact_of, import_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow

ATOL = 1e-4
STEPS = 16
PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64]
GOLDEN = {"cases": 1, "prompt_tokens": 12, "decode_steps": 8}
MAMBA, ATTENTION = [0, 1, 3], [2]
SSM_KEPT = ("conv.weight", "conv.bias", "A_log", "D", "dt_bias", "norm.weight")


@pytest.fixture(scope="module")
def granite4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("granite4", tmp_path_factory.mktemp("granite4"),
                             "executorch,coreml")


def _spec_at(spec_path: Path, quant: str) -> Path:
    """The imported spec at precision `quant` (a preset name), with a short golden run."""
    data = yaml.safe_load(spec_path.read_text())
    data["golden"] = GOLDEN
    if quant != "fp32":
        data["quantization"] = quant
        del data["targets"]["coreml"]
    path = spec_path.with_name(f"granite4_{quant}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def compiled(granite4, tmp_path_factory):
    """precision -> the pipeline's CompileResult, built once per precision."""
    from omnic.compiler.pipeline import compile

    built: dict[str, object] = {}

    def build(quant: str):
        if quant not in built:
            path = _spec_at(granite4[1], quant)
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                built[quant] = compile(path, tmp_path_factory.mktemp(quant) / "build",
                                       progress=False, cache=False)
            finally:
                torch.set_num_threads(before)
        return built[quant]

    return build


@pytest.fixture(scope="module")
def reference(granite4):
    """transformers' greedy tokens after PROMPT (its own cached decode, `generate`) and its
    logits over PROMPT + those tokens (one uncached pass) [len(PROMPT) + STEPS, vocab]."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(granite4[0]).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        hf.generation_config.eos_token_id = None
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS,
                          do_sample=False, pad_token_id=258)
        logits = hf(out).logits[0].float().numpy()
    return out[0, len(PROMPT):].tolist(), logits, hf.config


def test_fp32_pte_equals_transformers_step_by_step(compiled, reference):
    from omnic.targets.base import get_target

    result = compiled("fp32")
    a = artifact_of(result, "executorch")
    tokens_ref, logits_ref, _ = reference
    runner = get_target("executorch").load(a, result.out_dir)
    prefill = runner.forward(np.array(PROMPT))  # one call: the whole prompt
    assert prefill.shape == (len(PROMPT), logits_ref.shape[1])
    tokens, decode = [int(prefill[-1].argmax())], []
    for _ in range(STEPS):  # decode: both states of each mamba2 layer carry the past
        decode.append(runner.forward(np.array(tokens[-1:]))[-1])
        tokens.append(int(decode[-1].argmax()))
    assert runner.position == len(PROMPT) + STEPS
    assert tokens[:STEPS] == tokens_ref
    err_prefill = np.abs(prefill - logits_ref[:len(PROMPT)]).max()
    err_decode = np.abs(np.array(decode) - logits_ref[len(PROMPT):]).max()
    assert err_prefill < ATOL and err_decode < ATOL, (err_prefill, err_decode)
    # the logits move: a state that was lost would show far above the tolerance
    assert np.abs(logits_ref).max() > 1.0


@pytest.mark.parametrize("quant", ["fp32", "int4_g32"])
def test_the_pte_passes_its_golden_check(compiled, quant):
    # the generic graph, both states of each mamba2 layer copied back whole into its buffers
    a = assert_pte_passes_with_state_buffers(compiled(quant), "mamba2", MAMBA, [1, 192, 3],
                                             [1, 4, 32, 16])
    if quant != "fp32":
        assert a.precision == "8da4w_g32"


def _ssm_tensors(names) -> set[str]:
    return {n.split(".ssm.", 1)[1] + f"@{n.split('.')[1]}" for n in names if ".ssm." in n}


def test_int4_takes_the_projections_and_keeps_the_rest_of_a_mamba2_layer(compiled):
    result = compiled("int4_g32")
    want = {f"{p}.weight@{i}" for p in ("in_proj", "out_proj") for i in MAMBA}
    et = artifact_of(result, "executorch")
    assert _ssm_tensors(et.quantization["forms"]) == want
    assert {et.quantization["forms"][f"layers.{i}.ssm.{p}.weight"] for i in MAMBA
            for p in ("in_proj", "out_proj")} == {"8da4w_g32"}


def test_the_executorch_quantizer_keeps_a_mamba2_layer_s_other_tensors(granite4):
    """quantize_decoder itself on the int4 plan: in_proj/out_proj become torchao int4 tensors,
    the convolution, A_log, D, dt_bias and the gated norm stay the very fp32 parameters."""
    assert_quantizer_keeps(_spec_at(granite4[1], "int4_g32"), MAMBA, "ssm",
                           ("in_proj.weight", "out_proj.weight"), SSM_KEPT)


def _expected_states(config) -> dict[str, list[int]]:
    """The states the HF config implies (not omnic's spec): a mamba2 layer's convolution over
    x|B|C and its recurrent state; the attention layer's KV cache over the whole context."""
    inner = config.mamba_n_heads * config.mamba_d_head
    channels = inner + 2 * config.mamba_n_groups * config.mamba_d_state
    states = {}
    for i in MAMBA:
        states[f"k_cache_{i}"] = [1, channels, config.mamba_d_conv - 1]
        states[f"v_cache_{i}"] = [1, config.mamba_n_heads, config.mamba_d_head,
                                  config.mamba_d_state]
    head_dim = config.hidden_size // config.num_attention_heads
    for i in ATTENTION:
        states[f"k_cache_{i}"] = states[f"v_cache_{i}"] = [
            1, config.num_key_value_heads, config.max_position_embeddings, head_dim]
    return states


def test_the_mlpackage_declares_the_mamba2_states(compiled, reference):
    assert_mlpackage_declares(compiled("fp32"), _expected_states(reference[2]))


def test_state_updates_computed_one_after_the_other_are_reordered():
    """coremltools' canonicalize_inplace_pattern, as omnic registers it (coreml/convert.py), on
    the pattern of a mamba2 layer: two state values computed one after the other, both updates
    after them, the values made under two graph passes' scopes. coremltools 9.0's own pass
    raises on it (KeyError, then "scope cannot have len > 1"), at conversion and again when
    linear_quantize_weights re-runs the pipeline on an int4 model."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    from omnic.targets.coreml.convert import register_missing_ops

    passes = [ScopeInfo(ScopeSource.COREMLTOOLS_GRAPH_PASS, [p]) for p in ("p1", "p2")]
    specs = [mb.StateTensorSpec((1, 4), dtype=types.fp16) for _ in range(2)]

    @mb.program(input_specs=[*specs, mb.TensorSpec((1, 4), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(s1, s2, x):
        with mb.scope(passes[0]), mb.scope(passes[1]):
            a = mb.mul(x=mb.read_state(input=s1), y=x)
        b = mb.mul(x=mb.read_state(input=s2), y=x)
        mb.coreml_update_state(state=s1, value=a)
        mb.coreml_update_state(state=s2, value=b)
        return mb.add(x=a, y=b)

    register_missing_ops()
    PASS_REGISTRY["common::canonicalize_inplace_pattern"](prog)
    ops = list(prog.functions["main"].operations)
    assert [op.op_type for op in ops] == ["read_state", "mul", "coreml_update_state",
                                          "read_state", "mul", "coreml_update_state", "add"]
    assert [op.state.name for op in ops if op.op_type == "coreml_update_state"] == ["s1", "s2"]
