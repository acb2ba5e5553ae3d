"""The `{arch}.*` metadata keys and the extra tensors llama.cpp reads for a spec's architecture
(the write side; omnic.importers.gguf reads them back).

Key names are gguf-py's (`gguf.Keys`), each written as llama.cpp's convert_hf_to_gguf writes it
for that family (conversion/*.py of the llama-cpp-python 0.3.36 vendored copy) and as the
loader in src/models/<arch>.cpp reads it. Architecture choice: omnic.formats.gguf_families.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omnic.formats.gguf_families import NO_SOFTCAP, ArchPlan, Layers, layers_of

if TYPE_CHECKING:
    import numpy as np

    from omnic.spec import Model
    from omnic.spec.layers import LayerRope

# llama.cpp reads a per-layer RoPE on/off array under this key (src/llama-arch.cpp
# LLM_KV_ATTENTION_ROPE_PATTERN; granite_swa loads it); gguf-py 0.19 has no constant for it.
ROPE_PATTERN_KEY = "{arch}.attention.rope_pattern"
# qwen35's per-layer "is a Gated DeltaNet layer" array (LLM_KV_ATTENTION_RECURRENT_LAYERS; gguf-py
# 0.19 has no writer method for it)
RECURRENT_LAYERS_KEY = "{arch}.attention.recurrent_layers"


def main_rope(model: "Model", lay: Layers | None = None) -> "LayerRope | None":
    """The RoPE written as `rope.*`: the global layers' (the sliding layers' when all slide);
    None when no layer has one."""
    return (lay or layers_of(model)).main


def longrope_attention_factor(rs: Any) -> float:
    """LongRoPE's cos/sin scale: the spec's, else sqrt(1 + ln(factor) / ln(original)) as
    convert_hf_to_gguf's Phi3MiniModel computes it (1 when factor <= 1)."""
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    if rs.factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(rs.factor) / math.log(rs.original_context_length))


def write_hparams(writer: Any, model: "Model", plan: ArchPlan) -> None:
    """The `{arch}.*` keys llama.cpp's loader reads for this architecture."""
    import gguf

    hd, moe, arch = model.dim_per_head, model.moe, plan.arch
    lay = layers_of(model)
    rope = main_rope(model, lay)
    w = writer
    w.add_vocab_size(model.vocab_size)
    w.add_context_length(model.context_length)
    w.add_embedding_length(model.d_model)
    w.add_block_count(model.n_layers)
    w.add_feed_forward_length(model.ffn.hidden)
    w.add_head_count(model.n_heads)
    if arch in ("lfm2", "granitehybrid"):
        # ref: conversion/lfm2.py (LFM2Model), conversion/granite.py (GraniteHybridModel) -
        # head_count_kv per layer, 0 on the layers with a state: src/models/lfm2.cpp and
        # granite-hybrid.cpp take n_head_kv(il) == 0 for "recurrent"
        w.add_head_count_kv([0 if conv or ssm else model.kv_heads
                             for conv, ssm in zip(lay.conv, lay.ssm)])
        if arch == "lfm2":
            w.add_shortconv_l_cache(model.short_conv.kernel)  # type: ignore[union-attr]
        else:
            _write_mamba2(w, model, rope is not None)
    else:
        w.add_head_count_kv(model.kv_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(rope.dims if rope else hd)
    w.add_rope_freq_base(rope.theta if rope else model.rope.theta)
    w.add_layer_norm_rms_eps(model.norm.eps)
    if moe is not None:
        w.add_expert_count(moe.experts)
        w.add_expert_used_count(moe.top_k)
        if arch in ("qwen3moe", "deepseek"):
            w.add_expert_feed_forward_length(model.ffn.hidden)
        if arch == "deepseek":
            w.add_expert_shared_count(moe.shared_experts)
            w.add_leading_dense_block_count(0)
    rs = rope.scaling if rope else None
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
    elif rs is not None and rs.kind == "longrope":
        # ref: conversion/phi.py (Phi3MiniModel) - no scaling type or factor (a factor would
        # scale positions): the original context, the cos/sin scale and the factor tensors
        w.add_rope_scaling_orig_ctx_len(rs.original_context_length)
        w.add_rope_scaling_attn_factors(longrope_attention_factor(rs))
    if arch in ("granite", "granite_swa"):
        # ref: src/models/granite.cpp - logit scale required (output / scale); the others
        # optional and neutral when absent (attention: 1/sqrt(head_dim))
        w.add_logit_scale(model.logits_scaling or 1.0)
        if model.residual_multiplier is not None:
            w.add_residual_scale(model.residual_multiplier)
        if model.embedding_multiplier is not None:
            w.add_embedding_scale(model.embedding_multiplier)
        if model.attn_scale is not None or arch == "granite_swa":
            w.add_attention_scale(model.attn_scale or hd**-0.5)
    if arch == "granite_swa" and any(lay.nope):
        w.add_array(ROPE_PATTERN_KEY.format(arch=arch), [not n for n in lay.nope])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(model.attn_softcap or NO_SOFTCAP)
        w.add_final_logit_softcapping(model.final_softcap or NO_SOFTCAP)
    if arch == "gemma3" and model.final_softcap is not None:
        w.add_final_logit_softcapping(model.final_softcap)
    if plan.swa_pattern is not None:
        assert lay.window is not None
        w.add_sliding_window(lay.window)
        w.add_sliding_window_pattern(list(plan.swa_pattern))
        local = lay.local
        # gemma3's default is 10000 whatever rope.freq_base says: always written; gemma2
        # defaults to rope.freq_base (olmo2 is refused a base of its own: gguf_families' caps)
        if local is not None and (arch == "gemma3" or (
                arch == "gemma2" and rope is not None and local.theta != rope.theta)):
            w.add_rope_freq_base_swa(local.theta)
    elif arch == "gemma2":  # gemma2 defaults to a 4096 window on even layers; make every window
        w.add_sliding_window(model.context_length)  # cover the context
    elif arch == "phi3":  # as convert_hf_to_gguf writes it for Phi-4 (0: no window)
        w.add_sliding_window(0)
    if arch == "qwen35":
        _write_deltanet(w, model, lay, rope.dims if rope else hd)


def _write_mamba2(w: Any, model: "Model", rope: bool) -> None:
    """granitehybrid's own keys, as conversion/granite.py (GraniteHybridModel) writes them.

    ssm.time_step_rank is the number of heads ("mamba_dt_rank is _not_ the right field"), and
    `rope.scaling.finetuned` is the RoPE switch of every attention layer (False for Granite
    4.0-H's NoPE; llama.cpp defaults to True when it is absent). Granite's scales are written
    when the spec sets them (the converter writes the truthy ones; llama.cpp's neutral defaults
    otherwise: no logit or residual scaling, 1/sqrt(head_dim) scores). The context length is the
    spec's, not the converter's 2**20 for NoPE models: the file keeps what was compiled.
    """
    m = model.mamba2
    assert m is not None
    w.add_ssm_conv_kernel(m.kernel)
    w.add_ssm_inner_size(m.inner)
    w.add_ssm_state_size(m.d_state)
    w.add_ssm_time_step_rank(m.heads)
    w.add_ssm_group_count(m.groups)
    w.add_rope_scaling_finetuned(rope)
    for value, add in ((model.logits_scaling, w.add_logit_scale),
                       (model.residual_multiplier, w.add_residual_scale),
                       (model.embedding_multiplier, w.add_embedding_scale),
                       (model.attn_scale, w.add_attention_scale)):
        if value is not None:
            add(value)


def imrope_sections(dims: int) -> list[int]:
    """`rope.dimension_sections` for `dims` rotated dims of text: interleaved M-RoPE sends pair
    i to section i % 3 (llama.cpp's ggml_mrope_cache_init, is_imrope), so n pairs split
    [ceil(n/3), round(n/3), floor(n/3)] over the text positions and none to the 4th section,
    whose position is 0 for text tokens (llama-graph.cpp). For Qwen3.5's 64 dims this is the
    converter's [11, 11, 10, 0]; its fixed default would trip GGML_ASSERT(sum <= head_dim) on
    heads of fewer than 32 dims."""
    pairs = dims // 2
    return [(pairs + 2) // 3, (pairs + 1) // 3, pairs // 3, 0]


def _write_deltanet(w: Any, model: "Model", lay: Layers, dims: int) -> None:
    """qwen35's own keys, as conversion/qwen.py (Qwen3NextModel, _Qwen35MRopeMixin) writes them:
    ssm.state_size is the key (= value) head width, ssm.group_count the key heads,
    ssm.time_step_rank the value heads, ssm.inner_size the value width; the DeltaNet layers as
    `attention.recurrent_layers` (llama.cpp reads it before full_attention_interval, which is
    written too when the attention layers are exactly every n-th)."""
    g = model.gated_deltanet
    assert g is not None
    w.add_ssm_conv_kernel(g.kernel)
    w.add_ssm_state_size(g.key_dim)
    w.add_ssm_group_count(g.key_heads)
    w.add_ssm_time_step_rank(g.value_heads)
    w.add_ssm_inner_size(g.value_width)
    w.add_array(RECURRENT_LAYERS_KEY.format(arch="qwen35"), list(lay.deltanet))
    n = len(lay.deltanet)
    every = next((k for k in range(1, n + 1)
                  if all(dn == ((i + 1) % k != 0) for i, dn in enumerate(lay.deltanet))), None)
    if every is not None:
        w.add_full_attention_interval(every)
    w.add_rope_dimension_sections(imrope_sections(dims))


def extra_tensors(model: "Model", plan: ArchPlan) -> list[tuple[str, "np.ndarray"]]:
    """Tensors llama.cpp needs that have no omnic counterpart (F32, written as they are)."""
    import numpy as np

    out = []
    freqs = rope_freq_factors(model)
    if freqs is not None:
        out.append(("rope_freqs.weight", freqs))
    rope = main_rope(model)
    rs = rope.scaling if rope else None
    if rs is not None and rs.kind == "longrope":  # ref: conversion/phi.py generate_extra_tensors
        out.append(("rope_factors_long.weight", np.asarray(rs.long_factor, np.float32)))
        out.append(("rope_factors_short.weight", np.asarray(rs.short_factor, np.float32)))
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

    rope = main_rope(model)
    rs = rope.scaling if rope else None
    if rope is None or rs is None or rs.kind != "llama3":
        return None
    dim, base = rope.dims, rope.theta
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
