"""Spec <-> llama.cpp architecture: which `general.architecture`, which tensor names, which keys.

The GGUF target writes with these tables (omnic.targets.gguf) and the GGUF importer reads with
them (omnic.importers.gguf), so a file omnic writes imports back to the same model.

Torch-free and backend-free (numpy and the `gguf` package only when writing), so `check()` can
run in a bare environment. Every choice below was read in llama.cpp's own sources (the
llama-cpp-python 0.3.36 vendored copy), not guessed:

- `llama`   ref: https://github.com/ggml-org/llama.cpp/blob/master/src/models/llama.cpp
  RMSNorm, SwiGLU, optional q/k/v biases, "normal" RoPE (consecutive pairs: Q/K rows permuted
  as convert_hf_to_gguf's `LlamaModel.permute` does), MoE with softmax routing and the top-k
  weights renormalised (Mixtral), no sliding window.
- `qwen2`   ref: src/models/qwen2.cpp - NeoX RoPE (HF layout as is), q/k/v biases, head_dim *
  n_heads == d_model.
- `qwen3` / `qwen3moe` ref: src/models/qwen3.cpp, qwen3moe.cpp - NeoX RoPE, per-head q/k RMSNorm;
  the MoE variant renormalises the top-k weights.
- `deepseek` ref: src/models/deepseek.cpp - "normal" RoPE, MoE whose top-k weights are NOT
  renormalised plus ungated shared experts (DeepSeek-MoE v1); head_dim * n_heads == d_model.
- `gemma`   ref: src/models/gemma.cpp - NeoX RoPE, embeddings scaled by sqrt(d_model), GeGLU,
  tied output; convert_hf_to_gguf stores Gemma norms as (1 + w).
- `gemma2`  ref: src/models/gemma2.cpp - gemma plus sandwich norms, attention and final logit
  soft-caps (always applied), sliding window on the layers of `sliding_window_pattern`.

- `granite_swa` ref: src/models/granite-swa.cpp - llama blocks (optional q/k/v biases) with a
  sliding window on the layers of a per-layer pattern: the carrier for Mistral-style windows
  shorter than the context. Its attention sinks are required tensors; omnic writes -inf sinks
  (exp(-inf) = 0 adds nothing to the softmax denominator) and its Granite scales at their
  neutral values (logit scale 1, no residual or embedding scale).

Phi-3 checkpoints are llama blocks once imported (omnic splits the fused qkv/gate_up), so they are
written as `llama`: llama.cpp's `phi3` arch wants the fused tensors, and it switches its sliding
window off with a load-time warning (src/models/phi3.cpp), which this target treats as a failure.
Mistral's sliding window has no counterpart in llama.cpp's `llama` arch (convert_hf_to_gguf drops
it): a window at least as long as the context is a no-op and stays `llama`, a shorter one is
written as `granite_swa`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from omnic.constants import TensorNames as N
from omnic.spec.inventory import decoder_tensors

if TYPE_CHECKING:
    import numpy as np

    from omnic.spec import Model

# llama.cpp tensor base names (gguf-py constants.TENSOR_NAMES), kept as plain strings so that
# check() does not need the gguf package; a test asserts they equal gguf-py's.
GGUF_NAMES = {
    N.EMBED: "token_embd",
    N.FINAL_NORM: "output_norm",
    N.LM_HEAD: "output",
    N.ATTN_NORM: "blk.{bid}.attn_norm",
    N.Q: "blk.{bid}.attn_q",
    N.K: "blk.{bid}.attn_k",
    N.V: "blk.{bid}.attn_v",
    N.O: "blk.{bid}.attn_output",
    N.Q_BIAS: "blk.{bid}.attn_q",
    N.K_BIAS: "blk.{bid}.attn_k",
    N.V_BIAS: "blk.{bid}.attn_v",
    N.Q_NORM: "blk.{bid}.attn_q_norm",
    N.K_NORM: "blk.{bid}.attn_k_norm",
    N.POST_ATTN_NORM: "blk.{bid}.post_attention_norm",
    N.FFN_NORM: "blk.{bid}.ffn_norm",
    N.POST_FFN_NORM: "blk.{bid}.post_ffw_norm",
    N.GATE: "blk.{bid}.ffn_gate",
    N.UP: "blk.{bid}.ffn_up",
    N.DOWN: "blk.{bid}.ffn_down",
    N.ROUTER: "blk.{bid}.ffn_gate_inp",
    N.EXPERT_GATE: "blk.{bid}.ffn_gate_exps",
    N.EXPERT_UP: "blk.{bid}.ffn_up_exps",
    N.EXPERT_DOWN: "blk.{bid}.ffn_down_exps",
    N.SHARED_GATE: "blk.{bid}.ffn_gate_shexp",
    N.SHARED_UP: "blk.{bid}.ffn_up_shexp",
    N.SHARED_DOWN: "blk.{bid}.ffn_down_shexp",
}

# Architectures whose RoPE rotates consecutive pairs (LLAMA_ROPE_TYPE_NORM in llama-model.cpp
# `llama_model_rope_type`); omnic weights are in the HF rotate-half layout and get permuted.
NORM_ROPE_ARCHS = frozenset({"llama", "deepseek", "granite_swa"})
# Architectures that load the optional `rope_freqs` tensor (llama3 scaling), per src/models/*.cpp.
ROPE_FREQS_ARCHS = frozenset({"llama", "granite_swa"})

# Soft-cap written when a gemma2-arch spec has none: llama.cpp's gemma2 graph always applies
# tanh(x / c) * c; with c = 1e6 that is x to within float32 rounding for |x| < 1e3.
NO_SOFTCAP = 1.0e6


@dataclass(frozen=True)
class ArchPlan:
    """How one spec is written for llama.cpp."""

    arch: str  # general.architecture
    permute_qk: bool  # rows of Q/K (and their biases) interleaved for "normal" RoPE
    norm_offset: float  # 1.0: unit-offset norms are stored as (1 + w), as llama.cpp applies x * w
    swa_pattern: tuple[bool, ...] | None  # per layer: sliding window or not (gemma2 only)


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the GGUF file and where its values come from.

    `shape` is the numpy (row-major, torch) shape; GGUF lists the dimensions reversed. Expert
    tensors stack the per-expert omnic matrices along a new first axis, as convert_hf_to_gguf
    does for Mixtral (`torch.stack(datas, dim=0)`).
    """

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]  # omnic names, in stacking order
    transform: str  # "none" | "permute_q" | "permute_k" | "norm_offset"
    is_matrix: bool  # quantizable (2-D and up); 1-D tensors stay F32 as in llama.cpp


class ArchProblem(NamedTuple):
    """Why a spec has no llama.cpp architecture: the field to change and the reason (the GGUF
    target reports each as its Problem)."""

    field: str
    message: str


def _problem(field: str, message: str) -> ArchProblem:
    return ArchProblem(field, message)


def _approx(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def plan_arch(model: "Model") -> tuple[ArchPlan | None, list[ArchProblem]]:
    """The llama.cpp architecture for `model`, or the reasons there is none.

    Returns:
        (plan, problems): plan is None when problems is not empty.
    """
    problems: list[ArchProblem] = []
    hd, moe = model.dim_per_head, model.moe
    gemma_family = model.post_norms or model.scale_embeddings
    if model.norm.kind != "rmsnorm":
        problems.append(_problem("model.norm.kind", "llama.cpp's llama-family architectures use "
                                 "RMSNorm; layernorm blocks have no GGUF architecture here"))
    if model.ffn.kind == "gelu":
        problems.append(_problem("model.ffn.kind", "an ungated GELU FFN on llama blocks has no "
                                 "llama.cpp architecture (llama/qwen use SwiGLU, gemma GeGLU)"))

    if gemma_family:
        arch = "gemma2" if model.post_norms else "gemma"
        if not model.scale_embeddings:
            problems.append(_problem("model.scale_embeddings", f"llama.cpp's {arch} always scales "
                                     "embeddings by sqrt(d_model); set scale_embeddings: true"))
        if model.ffn.kind != "geglu":
            problems.append(_problem("model.ffn.kind", f"llama.cpp's {arch} uses GeGLU"))
        if not model.tie_embeddings:
            problems.append(_problem("model.tie_embeddings", f"llama.cpp's {arch} reads the "
                                     "output projection from token_embd (tied embeddings only)"))
        for flag in ("qkv_bias", "qk_norm"):
            if getattr(model, flag):
                problems.append(_problem(f"model.{flag}", f"llama.cpp's {arch} has no {flag}"))
        if moe is not None:
            problems.append(_problem("model.moe", f"llama.cpp's {arch} has no experts"))
        if model.post_norms:
            # ref: src/models/gemma2.cpp - 1/sqrt(head_dim) unless the 46-layer (27B) shape
            scale = (model.d_model / model.n_heads) ** -0.5 if model.n_layers == 46 else hd**-0.5
        else:
            scale = hd**-0.5
            for cap in ("attn_softcap", "final_softcap"):
                if getattr(model, cap) is not None:
                    problems.append(_problem(f"model.{cap}", "llama.cpp's gemma has no soft-cap; "
                                             "post_norms (gemma2) has"))
    else:
        scale = hd**-0.5
        if moe is None:
            arch = "qwen3" if model.qk_norm else "qwen2" if model.qkv_bias else "llama"
            if arch == "qwen2" and hd * model.n_heads != model.d_model:
                arch = "llama"  # qwen2 wants square q/o projections; llama takes the biases too
        elif model.qk_norm:
            arch = "qwen3moe"
        elif moe.shared_experts or not moe.normalize_top_k:
            arch = "deepseek"
        else:
            arch = "llama"
        if moe is not None:
            if arch == "qwen3moe" and (moe.shared_experts or not moe.normalize_top_k):
                problems.append(_problem("model.moe", "llama.cpp's qwen3moe renormalises the "
                                         "top-k weights and has no shared experts"))
            if arch == "deepseek":
                if not moe.shared_experts or moe.normalize_top_k:
                    problems.append(_problem("model.moe", "shared experts need normalize_top_k: "
                                             "false and un-normalised top-k needs shared experts "
                                             "(llama.cpp's deepseek); llama/mixtral renormalise"))
                if (moe.shared_hidden or model.ffn.hidden) != model.ffn.hidden:
                    problems.append(_problem("model.moe.shared_hidden", "llama.cpp's deepseek "
                                             "sizes shared experts as ffn.hidden * shared_experts"))
                if model.qkv_bias or hd * model.n_heads != model.d_model:
                    problems.append(_problem("model.head_dim", "llama.cpp's deepseek wants "
                                             "head_dim * n_heads == d_model and no q/k/v bias"))
        for cap in ("attn_softcap", "final_softcap"):
            if getattr(model, cap) is not None:
                problems.append(_problem(f"model.{cap}", f"llama.cpp's {arch} has no soft-cap "
                                         "(only gemma2, which also needs post_norms)"))
        if arch == "llama" and model.qk_norm:
            problems.append(_problem("model.qk_norm", "q/k norms need qwen3 (no experts mix)"))

    swa: tuple[bool, ...] | None = None
    sw = model.sliding_window
    if sw is not None and sw.size < model.context_length:
        swa = tuple(sw.layers == "all" or i % 2 == 0 for i in range(model.n_layers))
        if arch in ("llama", "qwen2") and (moe is None or not moe.shared_experts):
            arch = "granite_swa"  # llama blocks with a per-layer sliding window
        elif arch != "gemma2":
            problems.append(_problem("model.sliding_window", f"llama.cpp's {arch} has no "
                                     f"sliding-window attention; window {sw.size} < "
                                     f"context_length {model.context_length} would attend too far "
                                     "(use a window >= context_length or a shorter context)"))

    # granite_swa reads {arch}.attention.scale; the others fix the score scale
    fixed = arch != "granite_swa"
    if fixed and model.attn_scale is not None and not _approx(model.attn_scale, scale):
        problems.append(_problem("model.attn_scale", f"llama.cpp's {arch} uses a fixed score "
                                 f"scale {scale:.6g} here; {model.attn_scale:.6g} cannot be set"))

    rs = model.rope.scaling
    if rs is not None and rs.kind == "yarn" and (rs.beta_fast != 32.0 or rs.beta_slow != 1.0):
        problems.append(_problem("model.rope.scaling", f"llama.cpp's {arch} reads no YaRN beta "
                                 "keys; only beta_fast 32 / beta_slow 1 are expressible"))
    if rs is not None and rs.kind == "llama3" and arch not in ROPE_FREQS_ARCHS:
        problems.append(_problem("model.rope.scaling", f"llama.cpp's {arch} loads no rope_freqs "
                                 "tensor (llama3 scaling); llama/granite_swa do"))
    if problems:
        return None, problems
    return ArchPlan(arch, arch in NORM_ROPE_ARCHS, 1.0 if model.norm.unit_offset else 0.0, swa), []


def _template(name: str) -> tuple[str, int | None]:
    """The TensorNames template of a canonical name and its layer index."""
    parts = name.split(".")
    if parts[0] != "layers":
        return name, None
    layer = int(parts[1])
    rest = ".".join(parts[2:])
    if rest.startswith("ffn.experts."):
        rest = "ffn.experts.{e}." + ".".join(rest.split(".")[3:])
    return "layers.{i}." + rest, layer


def tensor_plan(model: "Model", plan: ArchPlan) -> list[GgufTensor]:
    """Every tensor of the GGUF file in writing order (the omnic inventory order)."""
    out: list[GgufTensor] = []
    experts: dict[str, list[Any]] = {}
    for info in decoder_tensors(model):
        tmpl, layer = _template(info.name)
        base = GGUF_NAMES[tmpl].format(bid=layer)
        suffix = ".bias" if info.name.endswith(".bias") else ".weight"
        if "{e}" in tmpl:
            group = experts.setdefault(base, [])
            group.append(info)
            if len(group) == model.moe.experts:  # type: ignore[union-attr]
                out.append(GgufTensor(base + suffix, (len(group), *info.shape),
                                      tuple(t.name for t in group), "none", True))
            continue
        transform = "none"
        if plan.permute_qk and tmpl in (N.Q, N.Q_BIAS):
            transform = "permute_q"
        elif plan.permute_qk and tmpl in (N.K, N.K_BIAS):
            transform = "permute_k"
        elif plan.norm_offset and info.role == "norm" and suffix == ".weight":
            transform = "norm_offset"
        out.append(GgufTensor(base + suffix, info.shape, (info.name,), transform, info.is_matrix))
    return out


def _permute(w: "np.ndarray", n_head: int) -> "np.ndarray":
    # ref: https://github.com/ggml-org/llama.cpp/blob/master/conversion/llama.py
    # (LlamaModel.permute): per head, rows [r0..r(h/2-1), r(h/2)..] -> interleaved pairs
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: "np.ndarray", n_head: int) -> "np.ndarray":
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf(t: GgufTensor, fetch: Callable[[str], "np.ndarray"], model: "Model", plan: ArchPlan
            ) -> "np.ndarray":
    """The float32 values of GGUF tensor `t`: a new array when stored transformed, else the
    source's own values (C-contiguous float32, a view: callers only read; no 1 GB copy of an
    embedding). Sources are only read."""
    import numpy as np

    if len(t.sources) > 1:
        return np.stack([np.asarray(fetch(s), dtype=np.float32) for s in t.sources], axis=0)
    w = np.asarray(fetch(t.sources[0]), dtype=np.float32)
    if t.transform == "permute_q":
        return np.ascontiguousarray(_permute(w, model.n_heads))
    if t.transform == "permute_k":
        return np.ascontiguousarray(_permute(w, model.kv_heads))
    if t.transform == "norm_offset":
        return w + np.float32(plan.norm_offset)
    return np.ascontiguousarray(w)


def from_gguf(t: GgufTensor, values: "np.ndarray", model: "Model", plan: ArchPlan,
              fresh: bool = False) -> dict[str, "np.ndarray"]:
    """Undo `to_gguf`: omnic name -> float32 array in omnic layout.

    fresh: `values` is a new float32 array no one else holds (a dequantization's result), so an
    untransformed tensor is returned as it is instead of copied (1 GB for a 1B embedding).
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float32).reshape(t.shape)
    if len(t.sources) > 1:
        return {s: np.array(values[i], copy=True, order="C") for i, s in enumerate(t.sources)}
    if t.transform == "permute_q":
        values = _unpermute(values, model.n_heads)
    elif t.transform == "permute_k":
        values = _unpermute(values, model.kv_heads)
    elif t.transform == "norm_offset":
        values = values - np.float32(plan.norm_offset)
    if fresh and values.flags.c_contiguous:
        return {t.sources[0]: values}
    # else a copy: F32 values may be views of the reader's memory map
    return {t.sources[0]: np.array(values, copy=True, order="C")}


def write_hparams(writer: Any, model: "Model", plan: ArchPlan) -> None:
    """The `{arch}.*` keys llama.cpp's loader reads for this architecture."""
    import gguf

    hd, moe = model.dim_per_head, model.moe
    w = writer
    w.add_vocab_size(model.vocab_size)
    w.add_context_length(model.context_length)
    w.add_embedding_length(model.d_model)
    w.add_block_count(model.n_layers)
    w.add_feed_forward_length(model.ffn.hidden)
    w.add_head_count(model.n_heads)
    w.add_head_count_kv(model.kv_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(model.rope.theta)
    w.add_layer_norm_rms_eps(model.norm.eps)
    if moe is not None:
        w.add_expert_count(moe.experts)
        w.add_expert_used_count(moe.top_k)
        if plan.arch in ("qwen3moe", "deepseek"):
            w.add_expert_feed_forward_length(model.ffn.hidden)
        if plan.arch == "deepseek":
            w.add_expert_shared_count(moe.shared_experts)
            w.add_leading_dense_block_count(0)
    rs = model.rope.scaling
    if rs is not None and rs.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs.factor)
    elif rs is not None and rs.kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs.factor)
        w.add_rope_scaling_orig_ctx_len(rs.original_context_length)
        if rs.attention_factor is not None:
            # llama.cpp multiplies by 0.1*ln(factor)+1 itself (llama-context.cpp, yarn_attn_factor)
            default = 0.1 * math.log(rs.factor) + 1.0 if rs.factor > 1 else 1.0
            w.add_rope_scaling_attn_factors(rs.attention_factor / default)
    if plan.arch == "granite_swa":
        # ref: src/models/granite-swa.cpp - logit scale is required (output / scale), the
        # residual and embedding scales are optional and off when absent
        w.add_logit_scale(1.0)
        w.add_key_value(gguf.Keys.Attention.SCALE.format(arch=plan.arch),
                        model.attn_scale or hd**-0.5, gguf.GGUFValueType.FLOAT32)
        assert model.sliding_window is not None and plan.swa_pattern is not None
        w.add_sliding_window(model.sliding_window.size)
        w.add_sliding_window_pattern(list(plan.swa_pattern))
    if plan.arch == "gemma2":
        w.add_attn_logit_softcapping(model.attn_softcap or NO_SOFTCAP)
        w.add_final_logit_softcapping(model.final_softcap or NO_SOFTCAP)
        if plan.swa_pattern is not None:
            assert model.sliding_window is not None
            w.add_sliding_window(model.sliding_window.size)
            w.add_sliding_window_pattern(list(plan.swa_pattern))
        else:  # gemma2 defaults to a 4096 window on even layers; make every window exceed context
            w.add_sliding_window(model.context_length)


def extra_tensors(model: "Model", plan: ArchPlan) -> list[tuple[str, "np.ndarray"]]:
    """Tensors llama.cpp needs that have no omnic counterpart (F32, written as they are)."""
    import numpy as np

    out = []
    freqs = rope_freq_factors(model)
    if freqs is not None:
        out.append(("rope_freqs.weight", freqs))
    if plan.arch == "granite_swa":  # required sinks; -inf: exp(-inf) = 0, no attention mass
        sinks = np.full(model.n_heads, -np.inf, dtype=np.float32)
        out += [(f"blk.{i}.attn_sinks.weight", sinks) for i in range(model.n_layers)]
    return out


def rope_freq_factors(model: "Model") -> "np.ndarray | None":
    """llama3 scaling as llama.cpp stores it: a `rope_freqs` tensor of per-pair divisors.

    ref: https://github.com/ggml-org/llama.cpp/blob/master/conversion/llama.py
    (LlamaModel.generate_extra_tensors)
    """
    import numpy as np

    rs = model.rope.scaling
    if rs is None or rs.kind != "llama3":
        return None
    dim, base = model.dim_per_head, model.rope.theta
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = rs.original_context_length / rs.low_freq_factor
    high_wavelen = rs.original_context_length / rs.high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rs.factor)
        else:
            smooth = (rs.original_context_length / wavelen - rs.low_freq_factor) / (
                rs.high_freq_factor - rs.low_freq_factor)
            factors.append(1 / ((1 - smooth) / rs.factor + smooth))
    return np.asarray(factors, dtype=np.float32)
