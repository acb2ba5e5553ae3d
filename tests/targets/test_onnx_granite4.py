"""Granite 4's mamba2 layers compile to the ONNX target, their states as graph inputs and outputs,
and onnxruntime runs the graph like transformers.

The checkpoint is tests/hf_checkpoints.py's tiny `GraniteMoeHybridForCausalLM` (4 layers: mamba,
mamba, attention, mamba; 4 ssm heads of 32, 2 groups, d_state 16, kernel 4), imported with `omnic
import` and compiled through the real pipeline (export, fusions, int4 storage, golden check) as a
user would. The reference is transformers itself, not omnic's PyTorch decoder: its `generate`
(its own cached decode) for the tokens, one uncached pass for the logits, and its cache for the
states after the prompt (the layout omnic claims is Hugging Face's).

The decode loop (tests/onnx_state_session.py) is written against onnxruntime directly (not
omnic's OnnxRunner, which the golden check uses): past.{i}.conv / past.{i}.recurrent start at
zero and each step's present.{i}.* is fed back as the next past.

Tolerance at fp32: 1e-4 max abs on logits, the fp32 row of tests/targets/test_onnx.py. The
arithmetic is the same float32 math reordered (fused RMSNorm and GroupQueryAttention, the scan
as omnic's one-chunk form where transformers runs chunks of 4); the measured error is printed.
A recurrent state that is zeroed after the prompt moves the next logits by far more (the test
below measures it), so 1e-4 cannot hide a broken state. int4 is judged by the pipeline's golden
check against the quantization-exact reference (the weights as MatMulNBits stores them).
onnxruntime-genai 0.18 has no Mamba-2 model type: the folder has no genai_config.json and the
artifact records genai as not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import import_checkpoint, scheme_builds  # noqa: E402
from onnx_state_session import (  # noqa: E402
    Session,
    assert_states_after_prompt,
    graph_io,
    onnx_artifact,
    onnx_folder,
    transformers_states,
    zeroed_state_logits,
)

pytestmark = pytest.mark.slow

ATOL = 1e-4
STEPS = 16
PROMPT = np.random.default_rng(3).integers(0, 256, 12).astype(np.int64)
SSM, ATTENTION = [0, 1, 3], [2]
HEADS, HEAD_DIM, D_STATE, GROUPS, KERNEL = 4, 32, 16, 2, 4  # hf_checkpoints' granite4
CHANNELS = HEADS * HEAD_DIM + 2 * GROUPS * D_STATE  # x | B | C


@pytest.fixture(scope="module")
def granite4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("granite4", tmp_path_factory.mktemp("granite4"), "onnx")


@pytest.fixture(scope="module")
def compiled(granite4, tmp_path_factory):
    """scheme -> the pipeline's CompileResult for the imported spec at that scheme (one build
    each, shared by the module)."""
    return scheme_builds(granite4[1], tmp_path_factory)


@pytest.fixture(scope="module")
def hf_model(granite4):
    return transformers.AutoModelForCausalLM.from_pretrained(granite4[0],
                                                             attn_implementation="eager")


@pytest.fixture(scope="module")
def reference(hf_model):
    """transformers' greedy tokens after PROMPT (`generate`), its logits over PROMPT + those
    tokens [len(PROMPT) + STEPS, vocab] (one uncached pass) and its states after PROMPT:
    layer -> (conv, recurrent)."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(PROMPT)[None], max_new_tokens=STEPS,
                                do_sample=False)
        tokens = out[0, len(PROMPT):].tolist()
        assert len(tokens) == STEPS, "transformers stopped early (EOS): pick another prompt"
        logits = hf_model(out).logits[0].numpy()
    return tokens, logits, transformers_states(hf_model, PROMPT, SSM)


def test_the_graph_carries_mamba2_states_under_genai_style_names(compiled) -> None:
    import onnx

    result = compiled("fp32")
    folder = onnx_folder(result)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inputs, outputs = graph_io(model)
    conv = ["batch_size", CHANNELS, KERNEL - 1]
    recurrent = ["batch_size", HEADS, HEAD_DIM, D_STATE]  # HF's order, not genai's [d_k, d_v]
    for i in SSM:
        assert inputs[f"past.{i}.conv"] == conv and outputs[f"present.{i}.conv"] == conv
        assert inputs[f"past.{i}.recurrent"] == recurrent
        assert outputs[f"present.{i}.recurrent"] == recurrent
        assert f"past_key_values.{i}.key" not in inputs and f"present.{i}.value" not in outputs
    for i in ATTENTION:
        assert inputs[f"past_key_values.{i}.key"] == ["batch_size", 2, "past_sequence_length", 16]
        assert outputs[f"present.{i}.value"] == ["batch_size", 2, "total_sequence_length", 16]
        assert f"past.{i}.conv" not in inputs
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert [n.input[3] for n in gqa] == ["past_key_values.2.key"]  # the attention layer fused

    # genai cannot run it: no config that claims a type, and the manifest says so
    assert not (folder / "genai_config.json").exists()
    assert (folder / "tokenizer.json").is_file()
    genai = onnx_artifact(result).details["genai"]
    assert genai["status"] == "not_run" and "no Mamba-2 model type" in genai["reason"]


def test_fp32_onnxruntime_decodes_what_transformers_generates(compiled, reference) -> None:
    result = compiled("fp32")
    golden = onnx_artifact(result).golden
    assert result.exit_code == 0 and golden.status == "passed", golden.reason

    want, logits, states = reference
    session = Session(onnx_folder(result) / "model.onnx")
    tokens, got = session.greedy(PROMPT, STEPS)
    got = np.concatenate([got, session.step([tokens[-1]])])  # the last token's logits too
    assert tokens == want
    n = len(PROMPT)
    prefill_err = np.abs(got[:n] - logits[:n]).max()
    decode_err = np.abs(got[n:] - logits[n:]).max()  # every one of the STEPS decode steps
    print(f"granite4 fp32 onnxruntime vs transformers: max |logit error| prefill "
          f"{prefill_err:.2g}, decode {decode_err:.2g} (logits up to "
          f"{np.abs(logits).max():.2g})")
    assert prefill_err < ATOL and decode_err < ATOL


def test_the_states_after_the_prompt_are_transformers_states(compiled, reference) -> None:
    """present.{i}.conv is the last kernel - 1 columns of transformers' conv state (it keeps
    kernel of them), present.{i}.recurrent its recurrent state, in the same order."""
    _, _, states = reference
    assert list(states) == SSM
    path = onnx_folder(compiled("fp32")) / "model.onnx"
    assert_states_after_prompt(path, PROMPT, states, ATOL)


@pytest.mark.parametrize("kind", ["recurrent", "conv"])
def test_each_state_carries_the_past(compiled, reference, kind) -> None:
    """Zeroing one kind of state after the prompt (as if the graph ignored that past) moves the
    next logits far past the tolerance: the comparison above would see a broken state."""
    want, logits, _ = reference
    path = onnx_folder(compiled("fp32")) / "model.onnx"
    session = Session(path)
    session.step(PROMPT)
    intact = session.step([want[0]])[0]
    assert np.abs(intact - logits[len(PROMPT)]).max() < ATOL
    zeroed = zeroed_state_logits(path, PROMPT, want[0], kind)
    assert np.abs(zeroed - logits[len(PROMPT)]).max() > 100 * ATOL


def test_int4_quantizes_the_projections_and_keeps_the_scan_in_float(compiled, hf_model) -> None:
    import onnx
    from onnx import numpy_helper

    result = compiled("int4")
    artifact = onnx_artifact(result)
    # against the quantization-exact reference: MatMulNBits' codes and scales, int8 activations
    assert result.exit_code == 0 and artifact.golden.status == "passed", artifact.golden.reason
    assert artifact.precision == "int4_g32"
    model = onnx.load(str(onnx_folder(result) / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    nbits = {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits"}
    floats = [numpy_helper.to_array(i).ravel() for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT]
    hf = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    for i in SSM:
        assert {f"layers.{i}.ssm.in_proj.weight.qweight",
                f"layers.{i}.ssm.out_proj.weight.qweight"} <= nbits, sorted(nbits)
        for name, shape in [("conv.weight", [CHANNELS, 1, KERNEL]), ("conv.bias", [CHANNELS]),
                            ("dt_bias", [HEADS]), ("norm.weight", [HEADS * HEAD_DIM])]:
            t = inits[f"layers.{i}.ssm.{name}"]
            assert t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == shape, name
        # A_log and D are folded into float constants: -exp(A_log) (the decay) and D itself
        prefix = f"model.layers.{i}.mamba."
        for value in (-np.exp(hf[prefix + "A_log"]), hf[prefix + "D"]):
            assert any(f.shape == value.shape and np.allclose(f, value, rtol=0, atol=1e-6)
                       for f in floats), (i, value)
    assert not any(".ssm." in n and "proj" not in n for n in nbits)
    assert not (onnx_folder(result) / "genai_config.json").exists()


def test_the_preflight_takes_granite4_and_refuses_what_it_cannot_export(granite4) -> None:
    from omnic.compiler.validate import load_resolved
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    data = load_resolved(granite4[1]).model_dump(mode="json")
    assert get_target("onnx").check(ResolvedSpec.model_validate(data)) == []
    with_vision = json.loads(json.dumps(data))
    with_vision["modalities"] = {"vision": {"kind": "siglip", "image_size": 32, "patch_size": 8,
                                            "d_model": 32, "n_layers": 1, "n_heads": 2}}
    problems = get_target("onnx").check(ResolvedSpec.model_validate(with_vision))
    assert any("no inputs_embeds decoder (text.onnx) with mamba2" in p.message
               for p in problems), problems
