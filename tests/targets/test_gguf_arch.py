"""GGUF target pre-flight: architecture choice, tensor names, types, check() - no llama.cpp needed.

The references here are gguf-py's own tables (tensor names per architecture) and an independent
numpy implementation of both RoPE conventions, never the code under test.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from omnic.spec import ResolvedSpec
from omnic.targets.gguf.target import GgufTarget
from omnic.formats.gguf_arch import (
    GGUF_NAMES, from_gguf, plan_arch, tensor_plan, to_gguf,
)
from omnic.targets.gguf.quant import plan_types

gguf = pytest.importorskip("gguf")

DEVICE = {"name": "host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}


def spec(model: dict[str, Any] | None = None, quant: dict[str, Any] | None = None,
         file_type: str = "auto", **top: Any) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny", "device": DEVICE, "model": {**TINY, **(model or {})},
        "quantization": quant or {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": file_type}}, **top})


GEMMA2 = {"ffn": {"kind": "geglu", "hidden": 128}, "norm": {"kind": "rmsnorm", "unit_offset": True},
          "scale_embeddings": True, "post_norms": True, "tie_embeddings": True,
          "attn_softcap": 50.0, "final_softcap": 30.0,
          "sliding_window": {"size": 16, "layers": "even"}}

GEMMA3 = {"ffn": {"kind": "geglu", "hidden": 128}, "norm": {"kind": "rmsnorm", "unit_offset": True},
          "scale_embeddings": True, "post_norms": True, "tie_embeddings": True, "qk_norm": True,
          "head_dim": 16, "n_layers": 6, "sliding_window": {"size": 16},
          "layer_pattern": "5 sliding : 1 full",
          "rope": {"theta": 1e6, "scaling": {"kind": "linear", "factor": 8.0},
                   "sliding": {"theta": 10000.0}}}
OLMO2 = {"pre_norms": False, "post_norms": True, "qk_norm": True, "qk_norm_width": "full"}
LONGROPE = {"kind": "longrope", "factor": 32.0, "original_context_length": 16,
            "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}

ARCH_CASES = {
    "llama": ({}, "llama"),
    "qwen2": ({"qkv_bias": True, "tie_embeddings": True}, "qwen2"),
    "qwen3": ({"qk_norm": True, "head_dim": 32}, "qwen3"),
    "mixtral": ({"moe": {"experts": 4, "top_k": 2}}, "llama"),
    "qwen3moe": ({"qk_norm": True, "moe": {"experts": 4, "top_k": 2}}, "qwen3moe"),
    "deepseek": ({"moe": {"experts": 4, "top_k": 2, "shared_experts": 1, "normalize_top_k": False}},
                 "deepseek"),
    "gemma": ({"ffn": {"kind": "geglu", "hidden": 128}, "norm": {"unit_offset": True},
               "scale_embeddings": True, "tie_embeddings": True}, "gemma"),
    "gemma2": (GEMMA2, "gemma2"),
    "mistral_window_covers_context": ({"sliding_window": {"size": 64}}, "llama"),
    "mistral_window": ({"sliding_window": {"size": 16}}, "granite_swa"),
    "gemma3": (GEMMA3, "gemma3"),
    "smollm3": ({"n_layers": 8, "layer_pattern": "3 full : 1 nope"}, "smollm3"),
    "phi3_partial": ({"rope": {"rotary_dim": 12}}, "phi3"),
    "phi3_longrope": ({"rope": {"scaling": LONGROPE}}, "phi3"),
    "olmo2": (OLMO2, "olmo2"),
    "granite": ({"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                 "logits_scaling": 8.0}, "granite"),
    "granite_attn_scale": ({"attn_scale": 0.5}, "granite"),  # Granite's attention_multiplier
    "window_and_nope": ({"sliding_window": {"size": 16}, "layer_pattern": "1 sliding : 1 nope"},
                        "granite_swa"),  # its rope_pattern array
}


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_architecture_and_names_are_llama_cpp_s(case: str) -> None:
    """The chosen arch, and every tensor name written is one gguf-py lists for that arch."""
    model, expected = ARCH_CASES[case]
    s = spec(model)
    plan, problems = plan_arch(s.model)
    assert problems == [] and plan is not None
    assert plan.arch == expected
    # gguf-py 0.19 predates llama.cpp's granite_swa; its tensors are granite's (plus sinks)
    known = {"granite_swa": "granite"}.get(plan.arch, plan.arch)
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == known)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch_enum]}
    for t in tensor_plan(s.model, plan):
        base = t.name.rsplit(".", 1)[0]
        generic = re.sub(r"^blk\.\d+\.", "blk.{bid}.", base)
        assert generic in allowed, f"{t.name} is not a {plan.arch} tensor in gguf-py"
    assert GgufTarget().check(s) == []


def test_names_equal_gguf_py_constants() -> None:
    """The plain-string name table equals gguf-py's TENSOR_NAMES (kept torch/gguf-free)."""
    values = set(gguf.TENSOR_NAMES.values())
    for name in GGUF_NAMES.values():
        assert name in values, name


def _rope_neox(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """HF rotate_half: pairs (i, i + d/2)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def _rope_norm(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """ggml's "normal" rope (GGML_ROPE_TYPE_NORM): consecutive pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def test_qk_permutation_turns_neox_rope_into_normal_rope() -> None:
    """Scores q.k with NeoX rope on HF weights == with llama.cpp's rope on the written weights."""
    s = spec({"n_heads": 4, "n_kv_heads": 2})
    plan, _ = plan_arch(s.model)
    tensors = {t.sources[0]: t for t in tensor_plan(s.model, plan)}
    rng = np.random.default_rng(0)
    d, hd = 64, 16
    wq = rng.standard_normal((64, d)).astype(np.float32)
    wk = rng.standard_normal((32, d)).astype(np.float32)
    x1, x2 = rng.standard_normal(d), rng.standard_normal(d)
    gq = to_gguf(tensors["layers.0.attn.q.weight"], lambda n: wq, s.model, plan)
    gk = to_gguf(tensors["layers.0.attn.k.weight"], lambda n: wk, s.model, plan)
    for qh in range(4):
        kh = qh // 2  # GQA: 2 query heads per kv head
        q_hf = (wq @ x1).reshape(4, hd)[qh]
        k_hf = (wk @ x2).reshape(2, hd)[kh]
        q_gg = (gq @ x1).reshape(4, hd)[qh]
        k_gg = (gk @ x2).reshape(2, hd)[kh]
        ref = _rope_neox(q_hf, 7) @ _rope_neox(k_hf, 3)
        got = _rope_norm(q_gg, 7) @ _rope_norm(k_gg, 3)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)
    back = from_gguf(tensors["layers.0.attn.q.weight"], gq, s.model, plan)
    np.testing.assert_array_equal(back["layers.0.attn.q.weight"], wq)


def test_unit_offset_and_experts_round_trip() -> None:
    s = spec({**ARCH_CASES["gemma"][0]})
    plan, _ = plan_arch(s.model)
    t = next(t for t in tensor_plan(s.model, plan) if t.sources == ("layers.0.attn_norm.weight",))
    w = np.linspace(-0.5, 0.5, 64).astype(np.float32)
    stored = to_gguf(t, lambda n: w, s.model, plan)
    np.testing.assert_allclose(stored, w + 1, rtol=0, atol=0)  # llama.cpp applies x * w
    s = spec(ARCH_CASES["mixtral"][0])
    plan, _ = plan_arch(s.model)
    exps = next(t for t in tensor_plan(s.model, plan) if t.name == "blk.1.ffn_up_exps.weight")
    assert exps.shape == (4, 128, 64)  # [experts, hidden, d_model]: ggml {d, hidden, experts}
    mats = {n: np.full((128, 64), i, np.float32) for i, n in enumerate(exps.sources)}
    stacked = to_gguf(exps, mats.__getitem__, s.model, plan)
    back = from_gguf(exps, stacked, s.model, plan)
    for n in exps.sources:
        np.testing.assert_array_equal(back[n], mats[n])


REFUSED = {
    "gelu": ({"ffn": {"kind": "gelu", "hidden": 128}}, "model.ffn.kind"),
    "layernorm": ({"norm": {"kind": "layernorm"}}, "model.norm.kind"),
    "attn_scale_on_qwen3": ({"qk_norm": True, "attn_scale": 0.5}, "model.attn_scale"),
    "attn_scale_on_gemma3": ({**GEMMA3, "attn_scale": 0.1}, "model.attn_scale"),
    # gemma3 scales only its global layers: a scaled sliding RoPE must be refused
    "gemma3_scaled_local": ({**GEMMA3, "rope": {"theta": 1e6, "scaling": {
        "kind": "linear", "factor": 8.0}}}, "model.rope.sliding"),
    "gemma3_yarn": ({**GEMMA3, "rope": {"theta": 1e6, "sliding": {"theta": 10000.0}, "scaling": {
        "kind": "yarn", "factor": 4.0, "original_context_length": 16}}}, "model.rope.scaling"),
    "smollm3_other_nope": ({"n_layers": 4, "layer_pattern": "1 full : 1 nope"},
                           "model.layer_pattern"),
    "nope_on_qwen3": ({"qk_norm": True, "n_layers": 4, "layer_pattern": "3 full : 1 nope"},
                      "model.layer_pattern"),
    "local_base_on_mistral": ({"sliding_window": {"size": 16},
                               "rope": {"sliding": {"theta": 5000.0}},
                               "layer_pattern": "1 sliding : 1 full"}, "model.rope.sliding"),
    "phi3_window": ({"rope": {"rotary_dim": 12}, "sliding_window": {"size": 16}},
                    "model.sliding_window"),
    "partial_on_norm_rope": ({"rope": {"rotary_dim": 12}, "qkv_bias": True}, "model.qkv_bias"),
    # context 200 <= original 250 (short factors) but llama.cpp allocates 256 > 250 (long)
    "longrope_padded_context": ({"context_length": 200, "rope": {"scaling": {
        **LONGROPE, "original_context_length": 250}}}, "model.context_length"),
    "longrope_on_granite": ({"embedding_multiplier": 2.0, "rope": {"scaling": LONGROPE}},
                            "model.embedding_multiplier"),
    "gemma3_without_sandwich": ({**GEMMA3, "post_norms": False}, "model.post_norms"),
    "olmo2_tied": ({**OLMO2, "tie_embeddings": True}, "model.tie_embeddings"),
    "olmo2_head_norms": ({**OLMO2, "qk_norm_width": "head"}, "model.qk_norm_width"),
    "granite_scale_on_gemma": ({**GEMMA3, "residual_multiplier": 0.5},
                               "model.residual_multiplier"),
    "window_on_qwen3": ({"qk_norm": True, "sliding_window": {"size": 16}}, "model.sliding_window"),
    "llama3_on_qwen3": ({"qk_norm": True, "rope": {"scaling": {"kind": "llama3", "factor": 8.0}}},
                        "model.rope.scaling"),
    "softcap_on_llama": ({"final_softcap": 30.0}, "model.final_softcap"),
    "gemma_untied": ({**ARCH_CASES["gemma"][0], "tie_embeddings": False}, "model.tie_embeddings"),
    "shared_normalized": ({"moe": {"experts": 4, "top_k": 2, "shared_experts": 1}}, "model.moe"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_names_the_block_it_cannot_express(case: str) -> None:
    model, field = REFUSED[case]
    problems = GgufTarget().check(spec(model))
    assert problems, case
    assert any(p.field == field for p in problems), [str(p) for p in problems]


def test_auto_file_type_follows_the_quantization() -> None:
    cases = [
        ({"weights": {"scheme": "int4", "group_size": 32}}, "Q4_0"),
        ({"weights": {"scheme": "int4", "group_size": 32, "symmetric": False}}, "Q4_1"),
        ({"weights": {"scheme": "int8"}}, "Q8_0"),
        ({"weights": {"scheme": "fp16"}}, "F16"),
        ({"weights": {"scheme": "bf16"}}, "BF16"),
        ({"weights": {"scheme": "fp32"}}, "F32"),
    ]
    for quant, expected in cases:
        s = spec(quant=quant)
        plan, _ = plan_arch(s.model)
        types, problems = plan_types(s, tensor_plan(s.model, plan))
        assert problems == [] and types.file_type.name == expected
        matrices = {n: t for n, t in types.types.items() if "norm" not in n}
        assert set(matrices.values()) == {expected}


def test_overrides_are_honoured_per_tensor() -> None:
    s = spec(quant={"weights": {"scheme": "int4", "group_size": 32},
                    "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"},
                                  {"match": {"name": r"layers\.1\..*"}, "scheme": "fp16"}]})
    plan, _ = plan_arch(s.model)
    types, problems = plan_types(s, tensor_plan(s.model, plan))
    assert problems == []
    assert types.types["token_embd.weight"] == "Q8_0"
    assert types.types["blk.0.attn_q.weight"] == "Q4_0"
    assert types.types["blk.1.ffn_down.weight"] == "F16"
    assert types.types["blk.1.attn_norm.weight"] == "F32"  # 1-D stays F32 as in llama.cpp
    assert types.types["output.weight"] == "Q4_0"


def test_group_size_without_a_gguf_type_is_refused_with_the_nearest() -> None:
    s = spec(quant={"weights": {"scheme": "int4", "group_size": 128}})
    problems = GgufTarget().check(s)
    assert len(problems) == 1
    assert problems[0].field == "quantization.weights"
    assert "Q4_0" in problems[0].message and "32" in problems[0].message


def test_k_quants_fall_back_on_rows_of_32_and_refuse_odd_rows() -> None:
    s = spec(file_type="Q4_K_M")  # d_model 64: llama.cpp's 32-block fallbacks, as for SmolLM
    plan, _ = plan_arch(s.model)
    types, problems = plan_types(s, tensor_plan(s.model, plan))
    assert problems == [] and "blk.0.attn_q.weight" in types.k_fallbacks
    wide = spec({"d_model": 256, "ffn": {"kind": "swiglu", "hidden": 512}, "vocab_size": 512},
                file_type="Q4_K_M")
    types, problems = plan_types(wide, tensor_plan(wide.model, plan))
    assert problems == [] and types.k_fallbacks == []
    odd = spec({"d_model": 48, "n_heads": 4, "n_kv_heads": 2}, file_type="Q4_K_M")
    problems = GgufTarget().check(odd)
    assert problems and all("F16" in p.message for p in problems)


def test_check_imports_neither_torch_nor_llama_cpp() -> None:
    import subprocess
    import sys

    code = ("import sys; from omnic.targets.base import get_target; "
            "from omnic.spec import ResolvedSpec; t = get_target('gguf'); "
            "assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules, "
            "sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_missing_llama_cpp_is_a_problem_for_k_quants_and_not_runnable(monkeypatch, tmp_path):
    """gguf-py writes every file; llama-cpp-python (the K-mixture quantizer, the runtime) is a
    pre-flight problem only for K mixtures, and `load` is NotRunnable without it."""
    import sys

    from omnic.targets.base import Artifact, NotRunnable

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` fails
    assert GgufTarget().check(spec()) == []
    problems = GgufTarget().check(spec(file_type="Q4_K_M"))
    assert [(p.field, p.message) for p in problems][:1] == [
        ("targets.gguf", "gguf: llama-cpp-python missing: install omnic[gguf] "
                         "(gguf, llama-cpp-python==0.3.36)")]
    with pytest.raises(NotRunnable, match="llama-cpp-python missing"):
        GgufTarget().load(Artifact("decoder", "gguf", "gguf/x.gguf"), tmp_path)


PHI4_MINI = {"rope": {"rotary_dim": 12, "scaling": {
    **LONGROPE, "short_factor": [1.0] * 6, "long_factor": [2.0] * 6}}}
# the keys (and extra tensors) llama.cpp's loader reads, as its src/models/<arch>.cpp names them
KEYS = {
    "gemma3": (GEMMA3, {
        "gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 10000.0,
        "gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0,
        "gemma3.attention.sliding_window": 16,
        "gemma3.attention.sliding_window_pattern": [True] * 5 + [False]}, []),
    "phi3": (PHI4_MINI, {
        "phi3.rope.dimension_count": 12, "phi3.rope.scaling.original_context_length": 16,
        "phi3.rope.scaling.attn_factor": pytest.approx((1 + np.log(32) / np.log(16)) ** 0.5),
        "phi3.rope.scaling.type": None, "phi3.rope.scaling.factor": None,
        "phi3.attention.sliding_window": 0},
        ["rope_factors_long.weight", "rope_factors_short.weight"]),
    "granite": (ARCH_CASES["granite"][0], {
        "granite.logit_scale": 8.0, "granite.residual_scale": pytest.approx(0.22),
        "granite.embedding_scale": 12.0, "granite.attention.scale": None}, []),
    "granite_swa_nope": (ARCH_CASES["window_and_nope"][0], {
        "granite_swa.attention.rope_pattern": [True, False],
        "granite_swa.attention.sliding_window_pattern": [True, False],
        "granite_swa.logit_scale": 1.0}, ["blk.0.attn_sinks.weight"]),
    "olmo2": (OLMO2, {"olmo2.attention.sliding_window": None}, []),
}


@pytest.mark.parametrize("case", sorted(KEYS))
def test_keys_are_the_ones_llama_cpp_reads(case: str, tmp_path) -> None:
    from omnic.formats.gguf_arch import extra_tensors, write_hparams

    model, expected, tensors = KEYS[case]
    s = spec(model)
    plan, problems = plan_arch(s.model)
    assert problems == [] and plan is not None
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), plan.arch)
    write_hparams(w, s.model, plan)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    fields = gguf.GGUFReader(tmp_path / "k.gguf").fields
    got = {k: fields[k].contents() if k in fields else None for k in expected}
    assert got == expected
    assert {n for n, _ in extra_tensors(s.model, plan)} >= set(tensors)


def test_phi3_fuses_qkv_and_gate_up_as_convert_hf_to_gguf() -> None:
    """attn_qkv = [q; k; v] rows, ffn_up = [gate; up] (ggml_swiglu activates the first half);
    both split back exactly."""
    s = spec(PHI4_MINI)
    plan, _ = plan_arch(s.model)
    tensors = {t.name: t for t in tensor_plan(s.model, plan)}
    assert "blk.0.attn_q.weight" not in tensors and "blk.0.ffn_gate.weight" not in tensors
    qkv, up = tensors["blk.0.attn_qkv.weight"], tensors["blk.0.ffn_up.weight"]
    assert qkv.sources == ("layers.0.attn.q.weight", "layers.0.attn.k.weight",
                           "layers.0.attn.v.weight") and qkv.shape == (64 + 32 + 32, 64)
    assert up.sources == ("layers.0.ffn.gate.weight", "layers.0.ffn.up.weight")
    rng = np.random.default_rng(0)
    mats = {n: rng.standard_normal((r, 64)).astype(np.float32)
            for n, r in zip(qkv.sources, qkv.rows)}
    fused = to_gguf(qkv, mats.__getitem__, s.model, plan)
    np.testing.assert_array_equal(fused, np.concatenate(list(mats.values())))
    back = from_gguf(qkv, fused, s.model, plan)
    for n in qkv.sources:
        np.testing.assert_array_equal(back[n], mats[n])
