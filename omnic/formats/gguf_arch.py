"""Spec <-> llama.cpp tensors: which names, shapes and layouts a GGUF file holds.

The GGUF target writes with these tables (omnic.targets.gguf) and the GGUF importer reads with
them (omnic.importers.gguf), so a file omnic writes imports back to the same model. Which
architecture carries a spec, and what none can express: omnic.formats.gguf_families; the
`{arch}.*` keys: omnic.formats.gguf_hparams (both re-exported here).

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
  soft-caps (always applied), sliding window on the layers of `sliding_window_pattern`, the
  sliding layers' own base in `rope.freq_base_swa`.
- `granite_swa` ref: src/models/granite-swa.cpp - llama blocks (optional q/k/v biases) with a
  sliding window on the layers of a per-layer pattern: the carrier for Mistral-style windows
  shorter than the context, and for NoPE layers beside sliding ones (its `rope_pattern` array).
  Its attention sinks are required tensors; omnic writes -inf sinks (exp(-inf) = 0 adds nothing
  to the softmax denominator) and Granite's scales from the spec (neutral when unset).
- `gemma3`, `smollm3`, `phi3`, `olmo2`, `granite`: see omnic.formats.gguf_families.
- `lfm2`    ref: src/models/lfm2.cpp, conversion/lfm2.py (LFM2Model) - short-convolution layers
  hold `shortconv.in_proj`, `shortconv.conv` and `shortconv.out_proj`; the kernel is stored
  squeezed to [d, kernel] ("conv op requires 2d tensor") and never quantized, as convert_hf_to_gguf
  and llama-quant.cpp keep it; the final norm is `token_embd_norm` (LLM_TENSOR_OUTPUT_NORM_LFM2).
- `granitehybrid` ref: src/models/granite-hybrid.cpp, conversion/mamba.py (Mamba2Model.
  modify_tensors) - a Mamba-2 layer holds `ssm_in` (z | x | B | C | dt rows, as in_proj), the
  convolution `ssm_conv1d.weight` squeezed to [channels, kernel] with its `.bias`, `ssm_dt.bias`,
  `ssm_a` = -exp(A_log) and `ssm_d` as [heads, 1] columns (no `.weight` suffix), the gated norm
  `ssm_norm.weight` as [groups, inner / groups] and `ssm_out`. Only ssm_in and ssm_out are
  matrices a file type quantizes: llama-quant.cpp never quantizes ssm_conv1d, and the rest are
  1-D in omnic (norms, biases and per-head values stay F32, as convert_hf_to_gguf keeps them).
- `qwen35` ref: src/models/qwen35.cpp, conversion/qwen.py (Qwen3_5TextModel,
  _LinearAttentionVReorderBase) - a Gated DeltaNet layer holds `attn_qkv` (q | k | v rows),
  `attn_gate` (z), `ssm_beta` (b), `ssm_alpha` (a), the convolution `ssm_conv1d.weight` squeezed
  to [channels, kernel] (no bias), `ssm_dt.bias`, `ssm_a` = -exp(A_log) (1-D, no suffix), the
  gated norm `ssm_norm.weight` (as is: the one norm without the +1) and `ssm_out`. When key heads
  are fewer than value heads, the file orders the value heads tiled ([G0v0, G1v0, ..., G0v1, ...]
  for ggml's broadcast) instead of grouped by key head as HF and omnic do ([G0v0, G0v1, ...]):
  v's rows of qkv and of the convolution, z's rows, b's, a's, dt_bias, A_log and out_proj's
  columns are permuted (GgufTensor.index). An attention layer's `attn_q` holds each head's query
  and output gate interleaved ([q | gate] per head, HF's q_proj as it is); the pre-FFN norm is
  `post_attention_norm`. The convolution, the 1-D tensors and ssm_alpha / ssm_beta stay F32
  (omnic keeps beta's and the decay's projections float: omnic.spec.inventory; llama-quant.cpp
  would quantize those two, so K mixtures get a type override: targets/gguf/quant.py).

Plain Phi-3 checkpoints are llama blocks once imported (omnic splits the fused qkv/gate_up), so
they are written as `llama`; partial rotary or LongRoPE need llama.cpp's `phi3`, written with the
fused `attn_qkv`/`ffn_up` it loads (as convert_hf_to_gguf does). phi3 switches its sliding window
off with a load-time warning (src/models/phi3.cpp), which this target treats as a failure.
Mistral's sliding window has no counterpart in llama.cpp's `llama` arch (convert_hf_to_gguf drops
it): a window at least as long as the context is a no-op and stays `llama`, a shorter one is
written as `granite_swa`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from omnic.constants import TensorNames as N
from omnic.formats.gguf_families import (  # noqa: F401 - re-exported: the target's one entry
    FUSED_ARCHS, NO_SOFTCAP, NORM_ROPE_ARCHS, ROPE_FREQS_ARCHS, ArchPlan, ArchProblem,
    file_layout, plan_arch,
)
from omnic.formats.gguf_hparams import (  # noqa: F401 - re-exported
    extra_tensors, rope_freq_factors, write_hparams,
)
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
    N.CONV_IN: "blk.{bid}.shortconv.in_proj",
    N.CONV_KERNEL: "blk.{bid}.shortconv.conv",
    N.CONV_OUT: "blk.{bid}.shortconv.out_proj",
    N.SSM_IN: "blk.{bid}.ssm_in",
    N.SSM_CONV: "blk.{bid}.ssm_conv1d",
    N.SSM_CONV_BIAS: "blk.{bid}.ssm_conv1d",
    N.SSM_DT_BIAS: "blk.{bid}.ssm_dt",
    N.SSM_A_LOG: "blk.{bid}.ssm_a",
    N.SSM_D: "blk.{bid}.ssm_d",
    N.SSM_NORM: "blk.{bid}.ssm_norm",
    N.SSM_OUT: "blk.{bid}.ssm_out",
    N.DN_QKV: "blk.{bid}.attn_qkv",
    N.DN_Z: "blk.{bid}.attn_gate",
    N.DN_B: "blk.{bid}.ssm_beta",
    N.DN_A: "blk.{bid}.ssm_alpha",
    N.DN_CONV: "blk.{bid}.ssm_conv1d",
    N.DN_DT_BIAS: "blk.{bid}.ssm_dt",
    N.DN_A_LOG: "blk.{bid}.ssm_a",
    N.DN_NORM: "blk.{bid}.ssm_norm",
    N.DN_OUT: "blk.{bid}.ssm_out",
}
# Suffixes other than ".weight" / ".bias" by the omnic name's ending. ref: granite-hybrid.cpp
# ("no "weight" suffix for these": ssm_a, ssm_d) and Mamba2Model.filter_tensors (dt_bias ->
# dt_proj.bias -> ssm_dt.bias)
SUFFIXES = {N.SSM_DT_BIAS: ".bias", N.SSM_A_LOG: "", N.SSM_D: "", N.DN_DT_BIAS: ".bias",
            N.DN_A_LOG: ""}
# Names an architecture's loader reads instead of GGUF_NAMES'. ref: src/llama-arch.cpp
# (LLM_TENSOR_OUTPUT_NORM_LFM2 -> "token_embd_norm", "fix for wrong tensor name"), qwen35.cpp
# (the pre-FFN norm is LLM_TENSOR_ATTN_POST_NORM)
ARCH_NAMES = {"lfm2": {N.FINAL_NORM: "token_embd_norm"},
              "qwen35": {N.FFN_NORM: "blk.{bid}.post_attention_norm"}}
# Fused tensors (ArchPlan.fused, phi3): the first part's template -> (name, the parts in row
# order). ref: conversion/phi.py keeps Phi-3's qkv_proj and gate_up_proj ([gate; up]) as they are.
FUSED = {N.Q: ("blk.{bid}.attn_qkv", (N.Q, N.K, N.V)),
         N.GATE: ("blk.{bid}.ffn_up", (N.GATE, N.UP))}
_FUSED_PARTS = {part for _, parts in FUSED.values() for part in parts[1:]}


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the GGUF file and where its values come from.

    `shape` is the numpy (row-major, torch) shape; GGUF lists the dimensions reversed. Expert
    tensors stack the per-expert omnic matrices along a new first axis, as convert_hf_to_gguf
    does for Mixtral (`torch.stack(datas, dim=0)`); fused tensors (phi3's attn_qkv, ffn_up)
    concatenate their parts' rows.
    """

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]  # omnic names, in stacking / row order
    transform: str  # "none" | "permute_q" | "permute_k" | "norm_offset" | "stack" | "concat"
    #                 | "squeeze" (a [d, 1, kernel] convolution stored as [d, kernel])
    #                 | "reshape" (a 1-D source stored 2-D: Mamba-2's D and gated norm)
    #                 | "neg_exp" (A_log stored as A = -exp(A_log): Mamba-2's [heads, 1])
    #                 | "interleave" (qwen35's attn_q: per head [query | gate] of 2 sources)
    is_matrix: bool  # quantizable (2-D and up); 1-D tensors stay F32 as in llama.cpp
    rows: tuple[int, ...] = ()  # "concat": the rows of each source
    # the file's order along `axis` after the transform: file[k] = transformed[index[k]] (qwen35's
    # tiled value heads); () keeps the order
    index: tuple[int, ...] = ()
    axis: int = 0


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
    inventory = decoder_tensors(model)
    shapes = {t.name: t.shape for t in inventory}
    names = {**GGUF_NAMES, **ARCH_NAMES.get(plan.arch, {})}
    for info in inventory:
        tmpl, layer = _template(info.name)
        if tmpl == N.ATTN_GATE:
            continue  # the attention output gate is written inside attn_q ("interleave")
        base = names[tmpl].format(bid=layer)
        suffix = SUFFIXES.get(tmpl, ".bias" if info.name.endswith(".bias") else ".weight")
        if "{e}" in tmpl:
            group = experts.setdefault(base, [])
            group.append(info)
            if len(group) == model.moe.experts:  # type: ignore[union-attr]
                out.append(GgufTensor(base + suffix, (len(group), *info.shape),
                                      tuple(t.name for t in group), "stack", True))
            continue
        if plan.fused and tmpl in _FUSED_PARTS:
            continue  # written inside its fused tensor
        if tmpl == N.Q and model.attn_output_gate:  # ref: qwen35.cpp (Qcur_full, gate views)
            sources = (info.name, N.ATTN_GATE.format(i=layer))
            out.append(GgufTensor(base + suffix, (2 * info.shape[0], *info.shape[1:]), sources,
                                  "interleave", True, (info.shape[0],) * 2))
            continue
        index, axis = _value_order(model, tmpl)
        if plan.fused and tmpl in FUSED:
            name, parts = FUSED[tmpl]
            sources = tuple(p.format(i=layer) for p in parts)
            rows = tuple(shapes[s][0] for s in sources)
            out.append(GgufTensor(name.format(bid=layer) + suffix, (sum(rows), *info.shape[1:]),
                                  sources, "concat", True, rows))
            continue
        if tmpl in (N.CONV_KERNEL, N.SSM_CONV, N.DN_CONV):  # ref: conversion/lfm2.py: squeeze(1)
            d, _, kernel = info.shape
            out.append(GgufTensor(base + suffix, (d, kernel), (info.name,), "squeeze", False,
                                  index=index))
            continue
        if tmpl == N.DN_A_LOG:  # ref: conversion/qwen.py (Qwen3NextModel): -torch.exp, 1-D
            out.append(GgufTensor(base + suffix, info.shape, (info.name,), "neg_exp", False,
                                  index=index))
            continue
        if tmpl in _MAMBA2_2D:  # ref: conversion/mamba.py (Mamba2Model.modify_tensors)
            m = model.mamba2
            assert m is not None
            shape = (m.groups, m.inner // m.groups) if tmpl == N.SSM_NORM else (m.heads, 1)
            out.append(GgufTensor(base + suffix, shape, (info.name,), _MAMBA2_2D[tmpl], False))
            continue
        transform = "none"
        if plan.permute_qk and tmpl in (N.Q, N.Q_BIAS):
            transform = "permute_q"
        elif plan.permute_qk and tmpl in (N.K, N.K_BIAS):
            transform = "permute_k"
        elif plan.norm_offset and info.role == "norm" and suffix == ".weight" and \
                tmpl != N.DN_NORM:  # the gated norm has no unit offset
            transform = "norm_offset"
        out.append(GgufTensor(base + suffix, info.shape, (info.name,), transform, info.is_matrix,
                              index=index, axis=axis))
    return out


# DeltaNet tensors whose value heads the file tiles: (axis, values per head: 0 for value_dim,
# whether q's and k's channels come first and stay in place: qkv's rows, the convolution's)
_VALUE_HEADS = {N.DN_QKV: (0, 0, True), N.DN_CONV: (0, 0, True), N.DN_Z: (0, 0, False),
                N.DN_B: (0, 1, False), N.DN_A: (0, 1, False), N.DN_DT_BIAS: (0, 1, False),
                N.DN_A_LOG: (0, 1, False), N.DN_OUT: (1, 0, False)}


def _value_order(model: "Model", tmpl: str) -> tuple[tuple[int, ...], int]:
    """(GgufTensor.index, axis) of a DeltaNet tensor: its value heads from HF's grouped order
    (key head g's value heads consecutive) to llama.cpp's tiled order, file head j * key_heads + g
    = omnic head g * r + j (r = value_heads / key_heads). ref: conversion/qwen.py
    (_LinearAttentionVReorderBase._reorder_v_heads; no reorder when key_heads == value_heads)."""
    g = model.gated_deltanet
    if tmpl not in _VALUE_HEADS or g is None or g.key_heads == g.value_heads:
        return (), 0
    axis, per, qk_first = _VALUE_HEADS[tmpl]
    return _tiled(g.key_heads, g.value_heads, per or g.value_dim,
                  2 * g.key_width if qk_first else 0), axis


@functools.lru_cache(maxsize=16)
def _tiled(key_heads: int, value_heads: int, per: int, first: int) -> tuple[int, ...]:
    """The index (shared by every layer: one tuple) after `first` channels kept in place."""
    r = value_heads // key_heads
    return tuple(range(first)) + tuple(first + (kh * r + j) * per + e for j in range(r)
                                       for kh in range(key_heads) for e in range(per))


# Mamba-2's 1-D tensors that the file holds 2-D, and how: A as -exp(A_log) ("unsqueeze A to
# use similar shape semantics as Mamba-1"), D likewise as a column, the gated norm per group
_MAMBA2_2D = {N.SSM_A_LOG: "neg_exp", N.SSM_D: "reshape", N.SSM_NORM: "reshape"}


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

    if t.index:
        return np.ascontiguousarray(np.take(_to_gguf(t, fetch, model, plan), t.index, t.axis))
    return _to_gguf(t, fetch, model, plan)


def _to_gguf(t: GgufTensor, fetch: Callable[[str], "np.ndarray"], model: "Model", plan: ArchPlan
             ) -> "np.ndarray":
    import numpy as np

    if t.transform in ("stack", "concat"):
        parts = [np.asarray(fetch(s), dtype=np.float32) for s in t.sources]
        return np.stack(parts, axis=0) if t.transform == "stack" else np.concatenate(parts)
    if t.transform == "interleave":  # per head [query | gate], as HF's q_proj holds them
        q, gate = (np.asarray(fetch(s), dtype=np.float32).reshape(model.n_heads, 1, -1,
                                                                  t.shape[-1])
                   for s in t.sources)
        return np.concatenate([q, gate], axis=1).reshape(t.shape)
    w = np.asarray(fetch(t.sources[0]), dtype=np.float32)
    if t.transform == "permute_q":
        return np.ascontiguousarray(_permute(w, model.n_heads))
    if t.transform == "permute_k":
        return np.ascontiguousarray(_permute(w, model.kv_heads))
    if t.transform == "norm_offset":
        return w + np.float32(plan.norm_offset)
    if t.transform in ("squeeze", "reshape"):
        return np.ascontiguousarray(w.reshape(t.shape))
    if t.transform == "neg_exp":  # the converter's -torch.exp(data_torch), correctly rounded
        return np.ascontiguousarray((-np.exp(w.astype(np.float64))).astype(np.float32)
                                    .reshape(t.shape))
    return np.ascontiguousarray(w)


def from_gguf(t: GgufTensor, values: "np.ndarray", model: "Model", plan: ArchPlan,
              fresh: bool = False) -> dict[str, "np.ndarray"]:
    """Undo `to_gguf`: omnic name -> float32 array in omnic layout.

    fresh: `values` is a new float32 array no one else holds (a dequantization's result), so an
    untransformed tensor is returned as it is instead of copied (1 GB for a 1B embedding).
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float32).reshape(t.shape)
    if t.index:  # back to omnic's order: a new array
        values = np.take(values, np.argsort(np.asarray(t.index)), t.axis)
        fresh = True
    if t.transform == "interleave":
        heads = values.reshape(model.n_heads, 2, -1, t.shape[-1])
        return {s: np.array(heads[:, i].reshape(-1, t.shape[-1]), copy=True, order="C")
                for i, s in enumerate(t.sources)}
    if t.transform == "stack":
        return {s: np.array(values[i], copy=True, order="C") for i, s in enumerate(t.sources)}
    if t.transform == "concat":
        ends = np.cumsum(t.rows)[:-1]
        return {s: np.array(part, copy=True, order="C")
                for s, part in zip(t.sources, np.split(values, ends))}
    if t.transform == "permute_q":
        values = _unpermute(values, model.n_heads)
    elif t.transform == "permute_k":
        values = _unpermute(values, model.kv_heads)
    elif t.transform == "norm_offset":
        values = values - np.float32(plan.norm_offset)
    elif t.transform == "squeeze":
        values = values.reshape(t.shape[0], 1, t.shape[1])
    elif t.transform == "reshape":
        values = values.reshape(-1)
    elif t.transform == "neg_exp":
        # log(-A) in float64, rounded once: A_log back to within float32 rounding (exp and log
        # are not exact inverses in floating point, so not always bit for bit)
        values = np.log(-values.astype(np.float64)).astype(np.float32).reshape(-1)
        fresh = True
    if fresh and values.flags.c_contiguous:
        return {t.sources[0]: values}
    # else a copy: F32 values may be views of the reader's memory map
    return {t.sources[0]: np.array(values, copy=True, order="C")}


