"""Qwen3.5 (Gated DeltaNet layers around a gated attention layer) on ExecuTorch and Core ML.

Both targets keep a gated_deltanet layer's two states beside the attention layer's KV cache,
inside the program: its convolution state [1, conv_channels, kernel - 1] as `k_cache_{i}` and its
recurrent state [1, value_heads, key_dim, value_dim] as `v_cache_{i}`, rewritten whole each call
(ExecuTorch: mutable buffers of the generic graph; Core ML: MLState).

The checkpoint is tests/hf_checkpoints.py's tiny `Qwen3_5ForCausalLM` (3 Gated DeltaNet layers:
2 key heads serving 4 value heads of 16, kernel 4; then one attention layer with q/k norms, the
output gate and half its head rotated), imported with `omnic import` and compiled at fp32 (both
targets), one build (`scheme_builds`). The reference is
transformers itself (`transformers_greedy`: its greedy tokens, and its logits over the prompt and
those tokens):
- the fp32 .pte, run on ExecuTorch's runtime (a 12-token prefill in one call, then one-token
  decode calls that carry both states), must give transformers' greedy tokens with logits
  within 1e-4 (the fp32 row of the ExecuTorch tests: the same float32 math reordered, the
  one-chunk WY form against transformers' chunked and token-by-token forms, XNNPACK's matmuls;
  measured 9.2e-6 prefill, 1.3e-5 decode, on logits up to 3.2);
- int4 (8da4w): the ExecuTorch quantizer must quantize qkv, z and out_proj and nothing else of a
  gated_deltanet layer. The int4 build itself is not in the suite (Granite 4's int4 .pte is, in
  test_granite4_et_coreml.py): int4 scrambles this tiny random checkpoint (plain RTN int4 of the
  deltanet layers' qkv alone, in torch, moves logits of at most ~3.4 by up to ~4), so its golden
  top-1 floor against fp32 would test chance; checked once by hand, the .pte equals its
  quantization-exact reference (9.5e-7 max abs, every greedy token) with a KL divergence from
  fp32 of 0.193 against llama.cpp Q4_0's 0.187 on the same plan;
- Core ML cannot run off macOS: its package must declare the states the HF config implies and
  pass the structural check, and the very torch program ct.convert receives (the stateful
  wrapper with fp16 states, exported with a dynamic token count) is run here step by step
  against transformers (fp16-rounded states: tokens equal, logits within 2e-2; measured 4.7e-3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")
pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from et_coreml_states import (  # noqa: E402
    assert_mlpackage_declares,
    assert_pte_passes_with_state_buffers,
    assert_quantizer_keeps,
)
from hf_checkpoints import (  # noqa: E402
    artifact_of, import_checkpoint, scheme_builds, transformers_greedy,
)

pytestmark = pytest.mark.slow

ATOL = 1e-4
FP16_STATE_ATOL = 2e-2
STEPS = 16
PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64]
DELTANET, ATTENTION = [0, 1, 2], [3]
QUANTIZED = ("qkv.weight", "z.weight", "out_proj.weight")
KEPT = ("b.weight", "a.weight", "conv.weight", "dt_bias", "A_log", "norm.weight")


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("qwen3_5", tmp_path_factory.mktemp("qwen35"), "executorch,coreml")


@pytest.fixture(scope="module")
def compiled(qwen35, tmp_path_factory):
    """scheme -> the pipeline's CompileResult (fp32: ExecuTorch and Core ML), built once, on one
    thread."""
    build = scheme_builds(qwen35[1], tmp_path_factory)

    def one_thread(scheme: str):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return build(scheme)
        finally:
            torch.set_num_threads(before)

    return one_thread


@pytest.fixture(scope="module")
def reference(qwen35):
    """transformers' greedy tokens after PROMPT and its logits over PROMPT + those tokens but
    the last [len(PROMPT) + STEPS - 1, vocab]."""
    return transformers_greedy(qwen35[0], PROMPT, STEPS)


def _greedy(forward) -> tuple[list[int], np.ndarray, np.ndarray]:
    """PROMPT in one call, then STEPS - 1 one-token calls: (tokens, prefill logits, decode
    logits), the decode rows the logits of each fed token."""
    prefill = forward(np.array(PROMPT))
    tokens, decode = [int(prefill[-1].argmax())], []
    for _ in range(STEPS - 1):  # decode: both states of each deltanet layer carry the past
        decode.append(forward(np.array(tokens[-1:]))[-1])
        tokens.append(int(decode[-1].argmax()))
    return tokens, prefill, np.array(decode)


def test_fp32_pte_equals_transformers_step_by_step(compiled, reference):
    from omnic.targets.base import get_target

    result = compiled("fp32")
    runner = get_target("executorch").load(artifact_of(result, "executorch"), result.out_dir)
    tokens_ref, logits_ref = reference
    tokens, prefill, decode = _greedy(runner.forward)
    assert runner.position == len(PROMPT) + STEPS - 1
    assert tokens == tokens_ref
    err_prefill = np.abs(prefill - logits_ref[:len(PROMPT)]).max()
    err_decode = np.abs(decode - logits_ref[len(PROMPT):]).max()
    print(f"executorch fp32: max |logit error| prefill {err_prefill:.3g}, decode "
          f"{err_decode:.3g}, max |logit| {np.abs(logits_ref).max():.3g}")
    assert err_prefill < ATOL and err_decode < ATOL, (err_prefill, err_decode)


def test_the_pte_passes_its_golden_check(compiled):
    # the generic graph, both states of each deltanet layer copied back whole into its buffers
    # (the attention layer's cache is written in place: index_put_, no copy)
    assert_pte_passes_with_state_buffers(compiled("fp32"), "gated_deltanet", DELTANET,
                                         [1, 128, 3], [1, 4, 16, 16])


def test_the_executorch_quantizer_keeps_a_deltanet_layer_s_other_tensors(qwen35):
    """quantize_decoder itself on the int4 plan: qkv, z and out_proj become torchao int4
    tensors; beta's and the decay's projections, the convolution, A_log, dt_bias and the gated
    norm stay the very fp32 parameters."""
    import yaml

    data = yaml.safe_load(qwen35[1].read_text())
    data["quantization"] = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True}}
    path = qwen35[1].with_name("qwen35_quantizer.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert_quantizer_keeps(path, DELTANET, "deltanet", QUANTIZED, KEPT)


def _expected_states(config) -> dict[str, list[int]]:
    """The states the HF config implies (not omnic's spec): a deltanet layer's convolution over
    q|k|v and its recurrent state; the attention layer's KV cache over the whole context."""
    key_width = config.linear_num_key_heads * config.linear_key_head_dim
    channels = 2 * key_width + config.linear_num_value_heads * config.linear_value_head_dim
    states = {}
    for i in DELTANET:
        states[f"k_cache_{i}"] = [1, channels, config.linear_conv_kernel_dim - 1]
        states[f"v_cache_{i}"] = [1, config.linear_num_value_heads, config.linear_key_head_dim,
                                  config.linear_value_head_dim]
    for i in ATTENTION:
        states[f"k_cache_{i}"] = states[f"v_cache_{i}"] = [
            1, config.num_key_value_heads, config.max_position_embeddings, config.head_dim]
    return states


def test_the_mlpackage_declares_the_deltanet_states(compiled, qwen35):
    config = transformers.AutoConfig.from_pretrained(qwen35[0])
    assert_mlpackage_declares(compiled("fp32"), _expected_states(config))


def test_the_program_coreml_converts_equals_transformers(qwen35, reference):
    """The exported stateful wrapper (fp16 states, a dynamic token count) that ct.convert
    receives, run step by step. The states are rounded to fp16 between calls (relative 2^-11),
    which moves logits up to ~3 by a few 1e-3; a lost or misplaced state moves them by ~1."""
    from omnic.compiler.validate import load_resolved
    from omnic.model import build_model
    from omnic.targets.coreml.convert import export, make_wrapper

    spec = load_resolved(qwen35[1])
    decoder = build_model(spec, qwen35[1].parent).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = export(make_wrapper(decoder), spec.model.context_length).module()
        position = 0

        def forward(tokens: np.ndarray) -> np.ndarray:
            nonlocal position
            ids = torch.tensor(tokens, dtype=torch.int64)[None]
            pos = torch.arange(position, position + ids.shape[1], dtype=torch.int64)
            position += ids.shape[1]
            with torch.no_grad():
                return module(ids, pos)[0].float().numpy()

        tokens, prefill, decode = _greedy(forward)
    finally:
        torch.set_num_threads(before)
    tokens_ref, logits_ref = reference
    assert tokens == tokens_ref
    err = max(np.abs(prefill - logits_ref[:len(PROMPT)]).max(),
              np.abs(decode - logits_ref[len(PROMPT):]).max())
    print(f"coreml's torch program (fp16 states): max |logit error| {err:.3g}")
    assert err < FP16_STATE_ATOL, err
