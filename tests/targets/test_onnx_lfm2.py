"""LFM2 compiles to the ONNX target in onnxruntime-genai's `lfm2` layout, and genai runs it like
transformers.

The checkpoint is tests/hf_checkpoints.py's tiny `Lfm2ForCausalLM` (4 layers: conv, conv,
attention, conv; a kernel of 4, not LFM2's 3, so a state of the wrong width shows), imported with
`omnic import` and compiled through the real pipeline (export, fusions, int4 storage, golden
check) as a user would. The reference is transformers itself, not omnic's PyTorch decoder: the
comparison covers the importer, the export of the conv state as graph I/O
(omnic/targets/onnx/conv_state.py), genai_config.json and genai's own LFM2 cache at once.

Tolerance at fp32: 1e-4 max abs on logits, the fp32 row of tests/targets/test_onnx.py. The
arithmetic is the same float32 math, reordered (fused RMSNorm and GroupQueryAttention kernels;
the convolution as one Conv over [state | new values] where transformers runs its reference
causal_conv1d); measured 4e-6 on logits up to ~4 in size, and a conv state that is ignored or
zeroed moves them by ~1 (the test below measures it), so 1e-4 cannot hide a wrong state.
int4 is judged by the pipeline's golden check against the quantization-exact reference (the
weights as MatMulNBits stores them, its int8 activations), and genai must generate what
onnxruntime's own run of the same graph does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import import_checkpoint, scheme_builds  # noqa: E402
from onnx_state_session import genai_decode, graph_io, onnx_artifact, onnx_folder  # noqa: E402

pytestmark = pytest.mark.slow

ATOL = 1e-4
STEPS = 16
PROMPT = np.random.default_rng(3).integers(0, 256, 12).astype(np.int64)
KERNEL, D_MODEL = 4, 64  # hf_checkpoints' conv_L_cache and hidden_size
CONVS, ATTENTION = [0, 1, 3], [2]


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("lfm2", tmp_path_factory.mktemp("lfm2"), "onnx")


@pytest.fixture(scope="module")
def compiled(lfm2, tmp_path_factory):
    """scheme -> the pipeline's CompileResult for the imported spec at that scheme."""
    return scheme_builds(lfm2[1], tmp_path_factory)


@pytest.fixture(scope="module")
def reference(lfm2):
    """transformers' greedy tokens after PROMPT (its own cached decode, `generate`) and its
    logits over PROMPT + those tokens (one uncached pass)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(lfm2[0], attn_implementation="eager")
    with torch.no_grad():
        out = hf.generate(torch.tensor(PROMPT)[None], max_new_tokens=STEPS, do_sample=False)
        tokens = out[0, len(PROMPT):].tolist()
        assert len(tokens) == STEPS, "transformers stopped early (EOS): pick another prompt"
        logits = hf(out[:, :-1]).logits[0].numpy()
    return tokens, logits


def test_the_graph_carries_conv_states_under_genai_s_names(compiled) -> None:
    import onnx

    folder = onnx_folder(compiled("fp32"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inputs, outputs = graph_io(model)
    state = ["batch_size", D_MODEL, KERNEL - 1]  # genai reads all but the batch from the graph
    for i in CONVS:
        assert inputs[f"past.{i}.conv"] == state and outputs[f"present.{i}.conv"] == state
        assert f"past_key_values.{i}.key" not in inputs and f"present.{i}.value" not in outputs
    for i in ATTENTION:
        assert inputs[f"past_key_values.{i}.key"] == ["batch_size", 2, "past_sequence_length", 16]
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert [n.input[3] for n in gqa] == ["past_key_values.2.key"]  # the attention layer fused

    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert config["model"]["type"] == "lfm2"
    assert decoder["layer_types"] == ["conv", "conv", "full_attention", "conv"]
    assert decoder["conv_cache_size"] == KERNEL - 1
    assert decoder["inputs"]["past_conv_names"] == "past.%d.conv"
    assert decoder["outputs"]["present_conv_names"] == "present.%d.conv"
    # every attention layer is one GroupQueryAttention: genai shares the KV buffer
    assert config["search"]["past_present_share_buffer"] is True


def test_fp32_genai_generates_what_transformers_generates(compiled, reference) -> None:
    result = compiled("fp32")
    golden = onnx_artifact(result).golden
    assert result.exit_code == 0 and golden.status == "passed", golden.reason

    want, logits = reference
    tokens, prefill, decode = genai_decode(onnx_folder(result), PROMPT, STEPS)
    assert tokens == want
    n = len(PROMPT)
    prefill_err = np.abs(prefill - logits[:n]).max()
    decode_err = np.abs(decode - logits[n:]).max()
    print(f"lfm2 fp32 vs transformers: max |logit error| prefill {prefill_err:.2g}, "
          f"decode {decode_err:.2g}")
    assert prefill_err < ATOL and decode_err < ATOL


def test_the_conv_state_carries_the_past(compiled, reference) -> None:
    """Zeroing the conv states after the prompt (as if the graph ignored its past) moves the
    next logits far past the tolerance: the comparison above would see a broken state."""
    from omnic.targets.onnx.target import OnnxRunner

    want, logits = reference
    runner = OnnxRunner(onnx_folder(compiled("fp32")) / "model.onnx")
    runner.forward(PROMPT)
    intact = runner.forward(np.array([want[0]]))[0]
    assert np.abs(intact - logits[len(PROMPT)]).max() < ATOL
    runner.reset()
    runner.forward(PROMPT)
    runner.past = {n: np.zeros_like(v) if n.endswith(".conv") else v
                   for n, v in runner.past.items()}
    zeroed = runner.forward(np.array([want[0]]))[0]
    assert np.abs(zeroed - logits[len(PROMPT)]).max() > 1000 * ATOL


def test_int4_stores_the_projections_as_matmulnbits_and_genai_runs_it(compiled) -> None:
    import onnx

    from omnic.runtime.generate import greedy
    from omnic.targets.onnx.target import OnnxRunner

    result = compiled("int4")
    artifact = onnx_artifact(result)
    # against the quantization-exact reference: MatMulNBits' codes and scales, int8 activations
    assert result.exit_code == 0 and artifact.golden.status == "passed", artifact.golden.reason
    folder = onnx_folder(result)
    model = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    nbits = {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits"}
    for i in CONVS:
        assert {f"layers.{i}.conv.in_proj.weight.qweight",
                f"layers.{i}.conv.out_proj.weight.qweight"} <= nbits, sorted(nbits)
        kernel = inits[f"layers.{i}.conv.kernel.weight"]  # a few taps per channel: float
        assert kernel.data_type == onnx.TensorProto.FLOAT and list(kernel.dims) == [
            D_MODEL, 1, KERNEL]
    # genai's run of the int4 graph (its LFM2 cache, a shared KV buffer) and onnxruntime's
    # (omnic's runner: growing cache, states fed back by name) generate the same tokens
    tokens, _, _ = genai_decode(folder, PROMPT, STEPS)
    runner = OnnxRunner(folder / "model.onnx")
    assert tokens == greedy(runner, PROMPT, STEPS)[0]


def test_the_preflight_refuses_what_genai_s_lfm2_cache_cannot_hold(lfm2) -> None:
    from omnic.compiler.validate import load_resolved
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    data = load_resolved(lfm2[1]).model_dump(mode="json")
    assert get_target("onnx").check(ResolvedSpec.model_validate(data)) == []
    sliding = json.loads(json.dumps(data))
    sliding["model"].update(layer_pattern=["short_conv", "sliding", "full", "short_conv"],
                            sliding_window={"size": 8}, layers=None)
    problems = get_target("onnx").check(ResolvedSpec.model_validate(sliding))
    assert any("sliding layers: 1:" in p.message for p in problems), problems
    with_vision = json.loads(json.dumps(data))
    with_vision["modalities"] = {"vision": {"kind": "siglip", "image_size": 32, "patch_size": 8,
                                            "d_model": 32, "n_layers": 1, "n_heads": 2}}
    problems = get_target("onnx").check(ResolvedSpec.model_validate(with_vision))
    assert any("no inputs_embeds decoder (text.onnx)" in p.message for p in problems), problems
