"""Qwen3.5 compiles to llama.cpp's `qwen35` architecture, written as convert_hf_to_gguf's
Qwen3_5TextModel writes it, and llama.cpp runs it like transformers; the GGUF importer reads the
file back.

The checkpoint is tests/hf_checkpoints.py's tiny `Qwen3_5ForCausalLM` (3 Gated DeltaNet layers
then one gated attention layer; 2 key heads of 16 serving 4 value heads of 16, so the file's
value heads are reordered; kernel 4; head_dim 16 with 8 rotated dims; tied), imported with
`omnic import` and compiled with the GGUF target as a user would. The references are
independent of the code under test: transformers itself for the F32 file's logits, the
checkpoint's own tensors under the converter's transforms (restated here from conversion/qwen.py)
for the file's layout, and for the Q4_0 file the weights it stores (dequantized by gguf-py) with
the int8 rounding llama.cpp gives each quantized matmul's input (Q8_0 blocks of 32, taken in the
file's order).
ref: https://github.com/ggml-org/llama.cpp/blob/master/conversion/qwen.py
ref: https://github.com/ggml-org/llama.cpp/blob/master/src/models/qwen35.cpp
"""

from __future__ import annotations

from dataclasses import replace

import json
import re
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from gguf_hybrid import (  # noqa: E402
    assert_f32_runs_like_transformers,
    assert_tensors_are_converted,
    import_back,
)
from hf_checkpoints import import_checkpoint, scheme_builds  # noqa: E402
from test_gguf_families import PROMPT, STEPS  # noqa: E402

DELTANET = [True, True, True, False]  # hf_checkpoints' layer_types


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("qwen3_5", tmp_path_factory.mktemp("qwen35"), "gguf")


@pytest.fixture(scope="module")
def builds(qwen35: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """scheme ("fp32" | "int4": int4 g32 symmetric, Q4_0) -> (CompileResult, the GGUF file)."""
    build = scheme_builds(qwen35[1], tmp_path_factory)

    def get(scheme: str):  # noqa: ANN202
        result = build(scheme)
        (file,) = (result.out_dir / "gguf").glob("*.gguf")
        return result, file

    return get


@pytest.mark.parametrize("scheme,precision", [
    ("fp32", "fp32"),
    # the exact reference rounds out_proj's input in the file's tiled value-head order, as
    # llama.cpp does (ActivationQuant.order): blocks of 32 span two 16-wide heads here
    ("int4", "q4_0"),
])
def test_the_compile_passes_its_golden_check(builds, scheme: str, precision: str) -> None:
    from omnic.golden.metrics import GREEDY_MATCH

    result, _ = builds(scheme)
    (a,) = result.manifest.artifacts
    assert a.details["architecture"] == "qwen35" and a.precision == precision
    assert result.status == "passed" and a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0


def _value_heads(w: np.ndarray, key_heads: int, value_heads: int, per: int, axis: int = 0
                 ) -> np.ndarray:
    """conversion/qwen.py _LinearAttentionVReorderBase._reorder_v_heads: value heads grouped by
    key head -> tiled."""
    w = np.moveaxis(w, axis, 0)
    out = w.reshape(key_heads, value_heads // key_heads, per, *w.shape[1:]).swapaxes(0, 1)
    return np.moveaxis(out.reshape(w.shape), 0, axis)


def _converted(ckpt: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as convert_hf_to_gguf would store them (numpy shapes, F32):
    conversion/qwen.py (Qwen3NextModel.modify_tensors, _LinearAttentionVReorderBase), restated.
    Checked by hand against the vendored converter's own file of this checkpoint: all 55
    tensors bit-identical."""
    from safetensors.numpy import load_file

    c = json.loads((ckpt / "config.json").read_text())
    kh, vh = c["linear_num_key_heads"], c["linear_num_value_heads"]
    qk, vd = 2 * kh * c["linear_key_head_dim"], c["linear_value_head_dim"]

    def v(w: np.ndarray, per: int, axis: int = 0) -> np.ndarray:
        return _value_heads(w, kh, vh, per, axis)

    def plus1(w: np.ndarray) -> np.ndarray:
        return w + np.float32(1)  # every norm but linear_attn.norm

    out = {}
    for name, w in load_file(ckpt / "model.safetensors").items():
        m = re.match(r"model\.layers\.(\d+)\.(.+)", name)
        if m is None:
            new, f = {"model.embed_tokens.weight": ("token_embd.weight", None),
                      "model.norm.weight": ("output_norm.weight", plus1)}[name]
            out[new] = f(w) if f else w
            continue
        new, f = {
            "input_layernorm.weight": ("attn_norm.weight", plus1),
            "post_attention_layernorm.weight": ("post_attention_norm.weight", plus1),
            "mlp.gate_proj.weight": ("ffn_gate.weight", None),
            "mlp.up_proj.weight": ("ffn_up.weight", None),
            "mlp.down_proj.weight": ("ffn_down.weight", None),
            "self_attn.q_proj.weight": ("attn_q.weight", None),  # [query | gate] per head
            "self_attn.k_proj.weight": ("attn_k.weight", None),
            "self_attn.v_proj.weight": ("attn_v.weight", None),
            "self_attn.o_proj.weight": ("attn_output.weight", None),
            "self_attn.q_norm.weight": ("attn_q_norm.weight", plus1),
            "self_attn.k_norm.weight": ("attn_k_norm.weight", plus1),
            "linear_attn.in_proj_qkv.weight": ("attn_qkv.weight",
                                               lambda w: np.concatenate([w[:qk], v(w[qk:], vd)])),
            "linear_attn.in_proj_z.weight": ("attn_gate.weight", lambda w: v(w, vd)),
            "linear_attn.in_proj_b.weight": ("ssm_beta.weight", lambda w: v(w, 1)),
            "linear_attn.in_proj_a.weight": ("ssm_alpha.weight", lambda w: v(w, 1)),
            "linear_attn.conv1d.weight": ("ssm_conv1d.weight", lambda w: np.concatenate(
                [w[:qk, 0], v(w[qk:, 0], vd)])),
            "linear_attn.dt_bias": ("ssm_dt.bias", lambda w: v(w, 1)),
            "linear_attn.A_log": ("ssm_a", lambda w: -np.exp(v(w, 1).astype(np.float64))),
            "linear_attn.norm.weight": ("ssm_norm.weight", None),
            "linear_attn.out_proj.weight": ("ssm_out.weight", lambda w: v(w, vd, axis=1)),
        }[m.group(2)]
        out[f"blk.{m.group(1)}.{new}"] = np.asarray(f(w) if f else w, np.float32)
    return out


def _imrope_pair_positions(sections: list[int], pairs: int) -> list[int]:
    """Which of the four M-RoPE positions each rotated pair takes under interleaved M-RoPE
    (ggml-cpu ops.cpp ggml_mrope_cache_init, is_imrope), restated; text tokens have positions
    [p, p, p, 0] (llama-graph.cpp llm_graph_input_pos::set_input)."""
    out = []
    for i in range(pairs):
        sector = i % sum(sections)
        out.append(next((k for k in (1, 2, 0) if sector % 3 == k and sector < 3 * sections[k]),
                        3))
    return out


def test_the_file_is_what_convert_hf_to_gguf_writes(builds, qwen35) -> None:
    """Keys from the checkpoint's config.json as Qwen3_5TextModel.set_gguf_parameters writes them
    (but rope.dimension_sections); every tensor named as gguf-py lists for QWEN35 and equal to the
    checkpoint's under the converter's transforms; in the Q4_0 file only the matrices quantized."""
    from omnic.formats.gguf_hparams import imrope_sections

    ckpt, _ = qwen35
    c = json.loads((ckpt / "config.json").read_text())
    reader = gguf.GGUFReader(builds("fp32")[1])

    def key(name: str):  # noqa: ANN202
        return reader.get_field(f"qwen35.{name}").contents()

    assert key("attention.recurrent_layers") == DELTANET
    assert key("full_attention_interval") == 4
    assert key("attention.head_count_kv") == c["num_key_value_heads"]  # one number
    assert (key("ssm.conv_kernel"), key("ssm.state_size"), key("ssm.group_count"),
            key("ssm.time_step_rank"), key("ssm.inner_size")) == (
        c["linear_conv_kernel_dim"], c["linear_key_head_dim"], c["linear_num_key_heads"],
        c["linear_num_value_heads"], c["linear_value_head_dim"] * c["linear_num_value_heads"])
    rotary = int(c["head_dim"] * c["rope_parameters"]["partial_rotary_factor"])
    assert key("rope.dimension_count") == rotary
    # The converter writes its default [11, 11, 10, 0] (Qwen3.5's 32 rotated pairs), which
    # trips GGML_ASSERT(sum(sections) <= head_dim) on this 16-dim head; omnic's sections give
    # every rotated pair a text position and equal the converter's for Qwen3.5's 64 dims.
    sections = key("rope.dimension_sections")
    assert sum(sections) <= c["head_dim"] and 3 not in _imrope_pair_positions(sections,
                                                                              rotary // 2)
    assert imrope_sections(64) == [11, 11, 10, 0]

    expected = _converted(ckpt)
    assert_tensors_are_converted(reader, expected, gguf.MODEL_ARCH.QWEN35)

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(builds("int4")[1]).tensors}
    for name, tname in types.items():
        matrix = re.search(r"(token_embd|attn_(qkv|gate|[qkv]|output)|ssm_out|ffn_\w+)\.weight$",
                           name)
        # conv, A, dt bias, norms: F32 as llama-quant.cpp keeps them; beta and decay
        # (ssm_beta, ssm_alpha): F32 as omnic keeps them (omnic.spec.inventory)
        assert tname == ("Q4_0" if matrix else "F32"), name


def test_f32_gguf_runs_in_llama_cpp_like_transformers(builds, qwen35) -> None:
    """llama.cpp's own greedy decoding equals transformers' over 16 tokens, and its logits
    match along the whole sequence, in one call and token by token (the conv and DeltaNet
    states carried from call to call)."""
    ckpt, spec = qwen35
    assert_f32_runs_like_transformers(builds("fp32")[1], ckpt, spec, DELTANET, PROMPT, STEPS,
                                      "qwen35")


def test_q4_0_file_is_its_weights_times_llama_cpp_s_rounding(builds, qwen35) -> None:
    """The Q4_0 file (the int4 compile) against omnic's decoder holding the weights exactly as
    the file stores them (gguf-py's dequantization) with each quantized matmul's input rounded
    as llama.cpp does (Q8_0 blocks of 32 with fp16 scales; out_proj's input in the file's tiled
    value-head order, which differs from omnic's on this checkpoint): equal to float32 noise."""
    from omnic.compiler.validate import load_resolved
    from omnic.formats.gguf_arch import plan_arch, tensor_plan
    from omnic.golden.activations import apply
    from omnic.model import build_model
    from omnic.runtime.generate import greedy
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.targets.gguf.quant import activation_rounding
    from omnic.targets.gguf.runtime import LlamaCppRunner
    from omnic.targets.gguf.write import read_back
    from test_gguf import decode_logits, nmse, reference_decoder

    _, spec_path = qwen35
    path = builds("int4")[1]
    spec = load_resolved(spec_path)
    plan, _ = plan_arch(spec.model)
    tensors = tensor_plan(spec.model, plan)
    facts, weights = read_back(path, spec, plan, tensors, True)
    decoder = build_model(spec, spec_path.parent)
    stored = {name: np.asarray(weights[name]) for name in weights.keys()}
    rounding = activation_rounding(tensors, facts["types"])
    moved = [name for name, aq in rounding.items() if aq.order]
    assert moved == [f"layers.{i}.deltanet.out_proj.weight" for i in (0, 1, 2)], moved

    def reference(orders: bool) -> TorchRunner:
        model = reference_decoder(decoder, stored)
        apply(model, rounding if orders else {n: replace(aq, order=())
                                               for n, aq in rounding.items()})
        return TorchRunner(model)

    exact = reference(True)
    tokens, _ = greedy(exact, PROMPT, STEPS)
    runner = LlamaCppRunner(str(path), n_ctx=64)
    try:
        assert runner.load_warnings == []
        got = decode_logits(runner, PROMPT, tokens[:-1])
        err, off = (nmse(got, decode_logits(r, PROMPT, tokens[:-1]))
                    for r in (exact, reference(False)))
        print(f"qwen35 Q4_0: nmse vs the exact reference {err:.2e} (out_proj rounded in "
              f"omnic's order: {off:.2e})")
        # err: float32 noise (one int8 rounding may land the other way on a step boundary,
        # which the recurrence then carries); off: rounding in omnic's order is visibly wrong
        assert err < 1e-6 and off > 1e-4
        assert greedy(runner, PROMPT, STEPS)[0] == tokens
    finally:
        runner.close()


def test_gguf_imports_back_to_the_same_model(builds, qwen35, tmp_path: Path) -> None:
    """`omnic import` of the F32 file: the spec model of the Hugging Face import, every tensor
    equal (the value heads back in omnic's order) but the unit-offset norms, stored as 1 + w,
    and A_log, stored as -exp(A_log): within float32 rounding."""
    _, spec = qwen35
    original, imported = import_back(builds("fp32")[1], spec, tmp_path)
    eps = torch.finfo(torch.float32).eps
    for name, tensor in original.items():
        if name.endswith(("A_log", "norm.weight")) and "deltanet.norm" not in name:
            err = (imported[name] - tensor).abs().max().item()
            assert err <= eps * (1 + tensor.abs().max().item()), name
        else:
            assert torch.equal(imported[name], tensor), name


_BASE = {"vocab_size": 512, "d_model": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
         "head_dim": 16, "ffn": {"kind": "swiglu", "hidden": 96}, "context_length": 64,
         "norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True},
         "rope": {"theta": 10000.0, "rotary_dim": 8},
         "layer_pattern": "3 gated_deltanet : 1 full", "qk_norm": True, "attn_output_gate": True,
         "gated_deltanet": {"key_heads": 2, "value_heads": 4, "key_dim": 16, "value_dim": 16}}


@pytest.mark.parametrize("change,field", [
    ({"gated_deltanet": {**_BASE["gated_deltanet"], "value_dim": 32}},
     "model.gated_deltanet.value_dim"),
    ({"attn_output_gate": False}, "model.attn_output_gate"),
    ({"qk_norm": False}, "model.qk_norm"),
    ({"qkv_bias": True}, "model.qkv_bias"),
    ({"layer_pattern": ["gated_deltanet", "mamba2", "gated_deltanet", "full"],
      "mamba2": {"heads": 4, "head_dim": 32, "d_state": 16, "groups": 2}}, "model.layer_pattern"),
    ({"layer_pattern": ["gated_deltanet", "gated_deltanet", "gated_deltanet", "nope"]},
     "model.layer_pattern"),
    ({"moe": {"experts": 4, "top_k": 2}}, "model.moe"),
    ({"scale_embeddings": True}, "model.scale_embeddings"),
    ({"rope": {"theta": 10000.0, "rotary_dim": 8, "scaling": {"kind": "linear", "factor": 2.0}}},
     "model.rope.scaling"),
    ({"attn_scale": 0.5}, "model.attn_scale"),
])
def test_what_qwen35_cannot_carry_is_named(change: dict, field: str) -> None:
    from omnic.formats.gguf_families import plan_arch
    from omnic.spec import Model

    assert plan_arch(Model.model_validate(_BASE))[0].arch == "qwen35"
    plan, problems = plan_arch(Model.model_validate({**_BASE, **change}))
    assert plan is None and field in [p.field for p in problems], problems


def test_the_output_gate_is_qwen35_s_alone() -> None:
    """Another architecture would drop the gate: refused by field."""
    from omnic.formats.gguf_families import plan_arch
    from omnic.spec import Model

    plain = {k: v for k, v in _BASE.items() if k not in ("layer_pattern", "gated_deltanet")}
    plain["rope"] = {"theta": 10000.0}  # else qwen3, which has no gate
    assert plan_arch(Model.model_validate({**plain, "attn_output_gate": False}))[0].arch == "qwen3"
    plan, problems = plan_arch(Model.model_validate(plain))
    assert plan is None and [p.field for p in problems] == ["model.attn_output_gate"], problems
