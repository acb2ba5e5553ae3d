"""Qwen3.5's gated_deltanet layers compile to the ONNX target in onnxruntime-genai's
`qwen3_5_text` layout, and onnxruntime and genai run the graph like transformers.

The checkpoint is tests/hf_checkpoints.py's tiny `Qwen3_5ForCausalLM` (3 Gated DeltaNet layers:
2 key heads serving 4 value heads of 16, a kernel of 4; then one attention layer with q/k norms,
the output gate and half its head rotated) with head_dim 32 instead of 16: 16 rotated dims are
what GroupQueryAttention's own rotary takes, so the attention layer fuses into one
GroupQueryAttention node followed by the gate, as the released models' layers do (head_dim 256,
64 rotated), and genai shares the KV buffer. It is imported with `omnic import` and compiled
through the real pipeline (export with the com.microsoft CausalConvWithState / LinearAttention
ops, fusions, int4 storage, golden check) as a user would. The reference is transformers itself,
not omnic's PyTorch decoder: its greedy tokens and logits (`transformers_greedy`), and its cache
for the states after the prompt (the layout omnic and genai's builder claim is Hugging Face's).

The decode loop (tests/onnx_state_session.py) is written against onnxruntime directly (not
omnic's OnnxRunner, which the golden check uses): past.{i}.conv / past.{i}.recurrent start at
zero and each step's present.{i}.* is fed back as the next past.

Tolerance at fp32: 1e-4 max abs on logits, the fp32 row of tests/targets/test_onnx.py. The
arithmetic is the same float32 math reordered (the recurrence token by token or in
onnxruntime's chunks where transformers runs chunks of 64, fused norms and attention); the
measured error is printed (1e-5 on logits up to ~3). A state zeroed after the prompt moves the
next logits by far more (measured below), so 1e-4 cannot hide a broken state. int4 is judged by
the pipeline's golden check against the quantization-exact reference (the weights as
MatMulNBits stores them), and genai must generate what onnxruntime's own run of that graph does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")
pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import make_checkpoint, scheme_builds, transformers_greedy  # noqa: E402
from onnx_state_session import (  # noqa: E402
    Session,
    assert_states_after_prompt,
    genai_decode,
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
DELTANET, ATTENTION = [0, 1, 2], [3]
KEY_HEADS, VALUE_HEADS, KEY_DIM, VALUE_DIM, KERNEL = 2, 4, 16, 16, 4  # hf_checkpoints' qwen3_5
CHANNELS = 2 * KEY_HEADS * KEY_DIM + VALUE_HEADS * VALUE_DIM  # q | k | v
HEAD_DIM = 32
EOS = 257


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    from omnic.cli.main import main

    root = tmp_path_factory.mktemp("qwen35")
    ckpt = make_checkpoint("qwen3_5", root, head_dim=HEAD_DIM)
    spec = root / "qwen3_5.yaml"
    assert main(["import", str(ckpt), "-o", str(spec), "--targets", "onnx"]) == 0
    return ckpt, spec


@pytest.fixture(scope="module")
def compiled(qwen35, tmp_path_factory):
    """scheme -> the pipeline's CompileResult for the imported spec at that scheme (one build
    each, shared by the module)."""
    return scheme_builds(qwen35[1], tmp_path_factory)


@pytest.fixture(scope="module")
def reference(qwen35):
    """transformers' greedy tokens after PROMPT, its logits over PROMPT + those tokens but the
    last [len(PROMPT) + STEPS - 1, vocab] and its states after PROMPT: layer -> (conv,
    recurrent)."""
    tokens, logits = transformers_greedy(qwen35[0], PROMPT.tolist(), STEPS)
    assert EOS not in tokens, "transformers emits EOS, where genai would stop: pick a prompt"
    hf = transformers.AutoModelForCausalLM.from_pretrained(qwen35[0],
                                                           attn_implementation="eager")
    return tokens, logits, transformers_states(hf, PROMPT, DELTANET)


def test_the_graph_carries_deltanet_states_in_genai_s_qwen3_5_layout(compiled) -> None:
    import onnx

    folder = onnx_folder(compiled("fp32"))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inputs, outputs = graph_io(model)
    conv = ["batch_size", CHANNELS, KERNEL - 1]
    recurrent = ["batch_size", VALUE_HEADS, KEY_DIM, VALUE_DIM]  # genai builder's CPU layout
    for i in DELTANET:
        assert inputs[f"past.{i}.conv"] == conv and outputs[f"present.{i}.conv"] == conv
        assert inputs[f"past.{i}.recurrent"] == recurrent
        assert outputs[f"present.{i}.recurrent"] == recurrent
        assert f"past_key_values.{i}.key" not in inputs and f"present.{i}.value" not in outputs
    for i in ATTENTION:
        assert inputs[f"past_key_values.{i}.key"] == [
            "batch_size", 2, "past_sequence_length", HEAD_DIM]
        assert f"past.{i}.conv" not in inputs
    assert inputs["position_ids"] == ["batch_size", "sequence_length"]

    nodes = {n.output[0]: n for n in model.graph.node}
    for op, state in (("CausalConvWithState", "conv"), ("LinearAttention", "recurrent")):
        fused = [n for n in model.graph.node if n.op_type == op]
        assert [n.domain for n in fused] == ["com.microsoft"] * len(DELTANET)
        assert [n.output[1] for n in fused] == [f"present.{i}.{state}" for i in DELTANET]
    for n in model.graph.node:
        if n.op_type == "LinearAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["q_num_heads"] == KEY_HEADS and attrs["kv_num_heads"] == VALUE_HEADS
            assert attrs["update_rule"] == b"gated_delta"
    # the attention layer: one GroupQueryAttention with its rotary, then its output gate
    (gqa,) = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert gqa.input[3] == "past_key_values.3.key"
    (gate,) = [n for n in model.graph.node if gqa.output[0] in n.input]
    assert gate.op_type == "Mul"
    assert {nodes[i].op_type for i in gate.input} == {"GroupQueryAttention", "Sigmoid"}

    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert config["model"]["type"] == "qwen3_5_text"
    assert decoder["inputs"]["past_conv_names"] == "past.%d.conv"
    assert decoder["inputs"]["past_recurrent_names"] == "past.%d.recurrent"
    assert decoder["outputs"]["present_conv_names"] == "present.%d.conv"
    assert decoder["outputs"]["present_recurrent_names"] == "present.%d.recurrent"
    assert config["search"]["past_present_share_buffer"] is True  # the one GQA layer


def test_fp32_onnxruntime_and_genai_decode_what_transformers_generates(compiled,
                                                                       reference) -> None:
    result = compiled("fp32")
    golden = onnx_artifact(result).golden
    assert result.exit_code == 0 and golden.status == "passed", golden.reason

    want, logits, _ = reference
    n = len(PROMPT)
    tokens, got = Session(onnx_folder(result) / "model.onnx").greedy(PROMPT, STEPS)
    assert tokens == want
    prefill_err = np.abs(got[:n] - logits[:n]).max()
    decode_err = np.abs(got[n:] - logits[n:]).max()  # every decode step
    genai_tokens, prefill, decode = genai_decode(onnx_folder(result), PROMPT, STEPS)
    assert genai_tokens == want
    genai_err = max(np.abs(prefill - logits[:n]).max(), np.abs(decode - logits[n:]).max())
    print(f"qwen3.5 fp32 vs transformers: max |logit error| onnxruntime prefill "
          f"{prefill_err:.2g}, decode {decode_err:.2g}; genai {genai_err:.2g} (logits up to "
          f"{np.abs(logits).max():.2g})")
    assert prefill_err < ATOL and decode_err < ATOL and genai_err < ATOL


def test_the_states_after_the_prompt_are_transformers_states(compiled, reference) -> None:
    """present.{i}.conv is the last kernel - 1 columns of transformers' conv state (it keeps
    kernel of them), present.{i}.recurrent its recurrent state, in the same order."""
    _, _, states = reference
    assert list(states) == DELTANET
    path = onnx_folder(compiled("fp32")) / "model.onnx"
    assert_states_after_prompt(path, PROMPT, states, ATOL)


@pytest.mark.parametrize("kind", ["recurrent", "conv"])
def test_each_state_carries_the_past(compiled, reference, kind) -> None:
    """Zeroing one kind of state after the prompt (as if the graph ignored that past) moves the
    next logits far past the tolerance: the comparisons above would see a broken state."""
    want, logits, _ = reference
    path = onnx_folder(compiled("fp32")) / "model.onnx"
    zeroed = zeroed_state_logits(path, PROMPT, want[0], kind)
    assert np.abs(zeroed - logits[len(PROMPT)]).max() > 100 * ATOL


def test_int4_quantizes_the_projections_and_genai_runs_it(compiled) -> None:
    import onnx

    from omnic.runtime.generate import greedy
    from omnic.targets.onnx.target import OnnxRunner

    result = compiled("int4")
    artifact = onnx_artifact(result)
    # against the quantization-exact reference: MatMulNBits' codes and scales
    assert result.exit_code == 0 and artifact.golden.status == "passed", artifact.golden.reason
    assert artifact.precision == "int4_g32"
    folder = onnx_folder(result)
    model = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    nbits = {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits"}
    for i in DELTANET:
        assert {f"layers.{i}.deltanet.{m}.weight.qweight" for m in ("qkv", "z", "out_proj")} \
            <= nbits, sorted(nbits)
        for name, shape in [("conv.weight", [CHANNELS, 1, KERNEL]),
                            ("dt_bias", [VALUE_HEADS]), ("norm.weight", [VALUE_DIM])]:
            t = inits[f"layers.{i}.deltanet.{name}"]
            assert t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == shape, name
    assert "layers.3.attn.gate.weight.qweight" in nbits
    assert sum(n.op_type == "LinearAttention" for n in model.graph.node) == len(DELTANET)
    # genai's run of the int4 graph (its recurrent states, a shared KV buffer) and
    # onnxruntime's (omnic's runner: growing cache, states fed back by name) generate the same
    tokens, _, _ = genai_decode(folder, PROMPT, STEPS)
    assert tokens == greedy(OnnxRunner(folder / "model.onnx"), PROMPT, STEPS, stop_ids=[EOS])[0]


def test_the_preflight_takes_qwen35_and_refuses_what_it_cannot_export(qwen35) -> None:
    from omnic.compiler.validate import load_resolved
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    data = load_resolved(qwen35[1]).model_dump(mode="json")
    assert get_target("onnx").check(ResolvedSpec.model_validate(data)) == []
    with_vision = json.loads(json.dumps(data))
    with_vision["modalities"] = {"vision": {"kind": "siglip", "image_size": 32, "patch_size": 8,
                                            "d_model": 32, "n_layers": 1, "n_heads": 2}}
    problems = get_target("onnx").check(ResolvedSpec.model_validate(with_vision))
    assert any("no inputs_embeds decoder (text.onnx) with gated_deltanet" in p.message
               for p in problems), problems
    with_conv = json.loads(json.dumps(data))
    with_conv["model"].update(layer_pattern=["gated_deltanet", "short_conv", "gated_deltanet",
                                             "full"], layers=None, short_conv={"kernel": 3})
    problems = get_target("onnx").check(ResolvedSpec.model_validate(with_conv))
    assert any("either gated_deltanet layers" in p.message for p in problems), problems
