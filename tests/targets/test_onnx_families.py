"""The ONNX target on the per-layer families: sliding windows, two RoPE tables, NoPE, partial
rotary, soft-caps, post-norm blocks, full-width q/k norms and Granite's multipliers.

Three tiny decoders (2 layers, d_model 64, random weights), each mixing the features of two
families so that only three exports (~10-20 s each, the expensive step) cover them all:
  gemma        Gemma 3's [sliding, full] layers with their own RoPE bases (1e4 / 1e6),
               per-head q/k norms, unit-offset norms, sandwich norms, scaled embeddings and
               query_pre_attn_scalar, plus Gemma 2's attention and final soft-caps
  nope_partial SmolLM3's NoPE layer beside a RoPE one, the RoPE one with Phi-4-mini's partial
               rotary (16 of 32 dims) and longrope scaling
  olmo_granite OLMo 2's post-norm block with q/k norms over the full width, and Granite's
               embedding / residual / logits multipliers and attention scale
Each is lowered at fp32 and checked three ways: onnxruntime logits against the torch decoder
(prompt longer than the window, then decode steps), which layers became GroupQueryAttention and
with which attributes, and greedy tokens through onnxruntime-genai's own Generator against the
torch decoder's (long enough that genai's windowed cache of window + 16 positions evicts).

Tolerance: 1e-4 max abs on logits, the fp32 row used by tests/targets/test_onnx.py (the same
float32 math, reordered by the fused kernels; 2e-7 to 4e-7 measured).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("torch")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

pytestmark = pytest.mark.slow

ATOL = 1e-4
WINDOW = 5
GENAI_CPU_SLACK = 16  # positions genai's CPU windowed cache keeps beyond the window
PROMPT = np.random.default_rng(7).integers(0, 256, 11).astype(np.int64)  # > WINDOW
STEPS = 16  # prompt + steps > WINDOW + GENAI_CPU_SLACK: genai's window buffer evicts
HOST = dict(name="host", memory_budget_mb=1024, bandwidth_gbps=10, os="linux", arch="x86_64")

LONGROPE = dict(kind="longrope", factor=4.0, original_context_length=32,
                short_factor=[1.0, 1.1, 1.2, 1.5, 1.7, 2.0, 2.2, 2.5],
                long_factor=[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
FAMILIES = {
    "gemma": dict(
        layer_pattern="1 sliding : 1 full", sliding_window=dict(size=WINDOW),
        rope=dict(theta=1e6, sliding=dict(theta=1e4)), qk_norm=True, post_norms=True,
        norm=dict(unit_offset=True, eps=1e-6), scale_embeddings=True, attn_scale=0.2,
        attn_softcap=50.0, final_softcap=30.0, ffn=dict(kind="geglu", hidden=128),
        tie_embeddings=True),
    "nope_partial": dict(
        layer_pattern=["full", "nope"], n_heads=2, n_kv_heads=1, head_dim=32,
        rope=dict(theta=1e4, rotary_dim=16, scaling=LONGROPE)),
    "olmo_granite": dict(
        pre_norms=False, post_norms=True, qk_norm=True, qk_norm_width="full",
        embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=8.0, attn_scale=0.125),
}
# A window as long as the context (64) hides nothing: full attention, no window cache.
FAMILIES_EXTRA = {"gemma_long_window": {**FAMILIES["gemma"], "sliding_window": dict(size=100)}}
# Per layer, the GroupQueryAttention attributes the lowering must write (None: left unfused).
EXPECTED_GQA = {
    "gemma": [dict(do_rotary=1, local_window_size=WINDOW, softcap=50.0, sliding_window_cache=1,
                   scale=0.2),
              dict(do_rotary=1, softcap=50.0, scale=0.2)],
    "nope_partial": [dict(do_rotary=1, scale=32**-0.5), dict(scale=32**-0.5)],
    "olmo_granite": [dict(do_rotary=1, scale=0.125), dict(do_rotary=1, scale=0.125)],
}
CHECKED = ("do_rotary", "local_window_size", "softcap", "sliding_window_cache", "scale")


def family_spec(name: str) -> ResolvedSpec:
    model = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                 ffn=dict(kind="swiglu", hidden=128), context_length=64)
    return ResolvedSpec.model_validate(dict(
        omnic=1, name=f"tiny-{name}", device=HOST,
        model={**model, **{**FAMILIES, **FAMILIES_EXTRA}[name]},
        weights=dict(source="random", seed=11), quantization=dict(weights=dict(scheme="fp32")),
        targets=dict(onnx={})))


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """name -> {spec, decoder, artifact, folder}, each family exported once, on first use."""
    root = tmp_path_factory.mktemp("onnx_families")
    cache: dict[str, dict] = {}

    def build(name: str) -> dict:
        if name not in cache:
            spec = family_spec(name)
            decoder = build_model(spec, Path("."))
            program = Program(spec=spec, spec_dir=Path("."), decoder=decoder,
                              quant_plan=tensor_schemes(spec))
            (artifact,) = get_target("onnx").lower(program, root / name / "onnx")
            cache[name] = dict(spec=spec, decoder=decoder, artifact=artifact,
                               build=root / name, folder=root / name / "onnx")
        return cache[name]

    return build


def _gqa_nodes(folder: Path) -> list:
    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    return [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]


def _layer_of(node) -> int:
    """The layer a GroupQueryAttention node serves, from its past key input's name."""
    return int(node.input[3].split(".")[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_torch(builds, name):
    b = builds(name)
    runner = get_target("onnx").load(b["artifact"], b["build"], intra_op_threads=1)
    reference = TorchRunner(b["decoder"])
    worst = 0.0
    for chunk in (PROMPT[:4], PROMPT[4:]):  # a first prompt, then a prompt continued past it
        got, want = runner.forward(chunk), reference.forward(chunk)
        worst = max(worst, float(np.abs(got - want).max()))
    for _ in range(6):
        token = np.array([int(np.argmax(want[-1]))], dtype=np.int64)
        got, want = runner.forward(token), reference.forward(token)
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= ATOL
    if name == "gemma":  # the sliding layer's cache kept its capacity: the window, not 17 slots
        assert runner.past["past_key_values.0.key"].shape[2] == WINDOW
        assert runner.past["past_key_values.1.key"].shape[2] == len(PROMPT) + 6


@pytest.mark.parametrize("name", FAMILIES)
def test_which_layers_fuse_and_how(builds, name):
    import onnx

    nodes = sorted(_gqa_nodes(builds(name)["folder"]), key=_layer_of)
    got = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute if a.name in CHECKED}
           for n in nodes]
    assert [_layer_of(n) for n in nodes] == list(range(len(EXPECTED_GQA[name])))
    for attrs, want in zip(got, EXPECTED_GQA[name]):
        assert attrs == pytest.approx(want)
    histogram = builds(name)["artifact"].op_histogram
    assert "Softmax" not in histogram  # no attention left unfused
    if name == "gemma":  # each layer rotates with its own table: local 1e4, global 1e6
        assert nodes[0].input[7] != nodes[1].input[7]
    if name == "nope_partial":  # partial rotary: a cos cache of 16 / 2 columns; NoPE: none
        assert len(nodes[0].input) == 10 and len(nodes[1].input) == 7
        assert "com.microsoft::RotaryEmbedding" not in histogram


def test_gemma_genai_config_has_the_windowed_cache(builds):
    from omnic.targets.onnx.genai import read_genai_config

    b = builds("gemma")
    decoder = read_genai_config(b["folder"])["model"]["decoder"]
    assert decoder["sliding_window"] == {"layers": [0], "slide_inputs": False,
                                         "slide_key_value_cache": False, "window_size": WINDOW}
    assert read_genai_config(b["folder"])["search"]["past_present_share_buffer"] is True
    assert b["artifact"].details["window_cache"] == {"layers": [0], "window": WINDOW}
    sig = b["artifact"].signature
    assert sig["inputs"]["past_key_values.0.key"]["shape"][2] == "window_cache_length"
    assert sig["outputs"]["present.0.key"]["shape"][2] == "window_cache_length"
    assert sig["inputs"]["past_key_values.1.key"]["shape"][2] == "past_sequence_length"


@pytest.mark.parametrize("name", FAMILIES)
def test_onnxruntime_genai_generates_the_reference_tokens(builds, name):
    pytest.importorskip("onnxruntime_genai")
    from genai_greedy import genai_greedy

    b = builds(name)
    expected, _ = greedy(TorchRunner(b["decoder"]), PROMPT.tolist(), STEPS)
    max_length = len(PROMPT) + STEPS
    got, generator = genai_greedy(b["folder"], PROMPT.tolist(), STEPS)
    assert got == expected
    if name == "gemma":  # genai really kept the sliding layer in a window-sized buffer
        assert generator.get_output("present.0.key").shape[2] == WINDOW + GENAI_CPU_SLACK
        assert generator.get_output("present.1.key").shape[2] == max_length


# -- the mask rule alone, on hand-built graphs: what it must refuse ----------------------------

def _mask_graph(window_op: str | None = "Less", window: int = WINDOW, reverse: bool = False):
    """The mask value of `(q - k >= 0) & (q - k <window_op> window) & attention_mask`, as the
    decoder's export writes it (q = the last T of range(S), k = range(S))."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper

    def const(name, value, dtype=np.int64):
        return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(
            np.asarray(value, dtype=dtype), name))

    nodes = [
        const("zero", 0), const("one", 1), const("big", [2**63 - 1]), const("ax0", [0]),
        const("ax1", [1]), const("ax01", [0, 1]), const("ax12", [1, 2]),
        const("w", window), const("minus_one", [-1]),
        helper.make_node("Shape", ["attention_mask"], ["s_shape"], start=1, end=2),
        helper.make_node("Squeeze", ["s_shape"], ["s"]),
        helper.make_node("Shape", ["input_ids"], ["t_shape"], start=1, end=2),
        helper.make_node("Sub", ["s_shape", "t_shape"], ["start"]),
        helper.make_node("Range", ["zero", "s", "one"], ["k_idx"]),
        helper.make_node("Slice", ["k_idx", "start", "big", "ax0", "one"], ["q_idx"]),
        helper.make_node("Unsqueeze", ["q_idx", "ax1"], ["q_col"]),
        helper.make_node("Unsqueeze", ["k_idx", "ax0"], ["k_row"]),
        helper.make_node("Sub", ["k_row", "q_col"] if reverse else ["q_col", "k_row"], ["d"]),
        helper.make_node("GreaterOrEqual", ["d", "zero"], ["causal"]),
    ]
    last = "causal"
    if window_op is not None:
        nodes += [helper.make_node(window_op, ["d", "w"], ["near"]),
                  helper.make_node("And", ["causal", "near"], ["local"])]
        last = "local"
    nodes += [
        helper.make_node("Unsqueeze", [last, "ax01"], ["allowed"]),
        helper.make_node("Cast", ["attention_mask"], ["keep_b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep_b", "ax12"], ["keep"]),
        helper.make_node("And", ["allowed", "keep"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes, "mask",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    model = ir.serde.deserialize_model(helper.make_model(graph))
    # Constants as the exporter's folded form: initializer-like constant values.
    import onnx_ir.passes.common as common

    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return model.graph.outputs[0]


@pytest.mark.parametrize("case,expected", [
    (dict(), (True, WINDOW)),
    (dict(window_op=None), (True, None)),
    (dict(window_op="LessOrEqual"), (False, None)),  # window + 1 keys: not GQA's convention
    (dict(window_op="Greater"), (False, None)),
    (dict(reverse=True), (False, None)),  # k - q: an anti-causal mask
    (dict(window=0), (False, None)),
])
def test_mask_rule_reads_the_window_exactly(case, expected):
    from omnic.targets.onnx.gqa import mask_window

    assert mask_window(_mask_graph(**case)) == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_the_memory_plan_predicts_which_layers_get_window_caches(builds, name):
    """omnic.targets.kv_layout (torch-free, the plan's) agrees with what the export did."""
    from omnic.targets.kv_layout import kv_positions
    from omnic.targets.onnx.rules import GENAI_WINDOW_SLACK

    b = builds(name)
    spec, got = b["spec"], b["artifact"].details.get("window_cache")
    windowed = set(got["layers"]) if got else set()
    expected = [min(64, got["window"] + GENAI_WINDOW_SLACK) if i in windowed else 64
                for i in range(spec.model.n_layers)]
    assert kv_positions(spec, "onnx") == expected


def test_a_window_longer_than_the_context_gets_no_window_cache(builds):
    from omnic.targets.kv_layout import kv_positions

    b = builds("gemma_long_window")
    assert "window_cache" not in b["artifact"].details or not b["artifact"].details[
        "window_cache"]
    attrs = [{a.name for a in n.attribute} for n in _gqa_nodes(b["folder"])]
    assert all("local_window_size" not in a for a in attrs) and len(attrs) == 2
    assert kv_positions(b["spec"], "onnx") == [64, 64]
