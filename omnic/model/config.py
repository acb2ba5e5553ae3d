"""The one place where the spec becomes plain numbers: `ResolvedSpec.model` -> `DecoderConfig`.

Modules under `omnic/model/modules/` only ever see a `DecoderConfig` (or plain arguments
taken from it), never a spec object (STYLE.md: "config never reaches into modules").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omnic.spec.layers import STATE_KINDS

if TYPE_CHECKING:
    from omnic.spec import Model


@dataclass(frozen=True)
class DecoderConfig:
    """Every number the decoder is built from; no spec objects inside."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    ffn_kind: str = "swiglu"  # swiglu | geglu | gelu
    ffn_hidden: int = 256
    norm_kind: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False
    rope_theta: float = 10000.0
    # None, or a plain dict: {"kind": "linear"|"llama3"|"yarn", "factor": ..., ...}
    rope_scaling: dict[str, Any] | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    # The per-layer table as plain tuples (spec/layers.py resolves patterns and shortcuts).
    # windows[i]: layer i's sliding window, None when it attends globally (None: no layer slides).
    windows: tuple[int | None, ...] | None = None
    # ropes[i]: (theta, scaling dict or None, rotated dims) of layer i, None for a NoPE layer
    # (None: every layer rotates its whole head with rope_theta / rope_scaling).
    ropes: tuple[tuple[float, dict[str, Any] | None, int] | None, ...] | None = None
    # mixers[i]: "attention", "short_conv" for an LFM2 convolution layer, "mamba2" for a
    # Mamba-2 layer or "gated_deltanet" for a Qwen3.5 linear-attention layer (None: all attention)
    mixers: tuple[str, ...] | None = None
    conv_kernel: int = 0  # tokens a short_conv layer's convolution spans
    # a mamba2 layer's (heads, head_dim, d_state, groups, kernel, conv_bias); None: no such layer
    mamba2: tuple[int, int, int, int, int, bool] | None = None
    # a gated_deltanet layer's (key_heads, value_heads, key_dim, value_dim, kernel); None: none
    deltanet: tuple[int, int, int, int, int] | None = None
    attn_output_gate: bool = False  # sigmoid output gate of the attention layers (Qwen3.5)
    moe_experts: int = 0  # 0: dense FFN
    moe_top_k: int = 0
    moe_shared_experts: int = 0
    moe_shared_hidden: int | None = None
    moe_normalize_top_k: bool = True
    scale_embeddings: bool = False
    post_norms: bool = False
    pre_norms: bool = True
    qk_norm_full: bool = False  # one norm over all heads' dims at once (OLMo 2)
    embedding_multiplier: float = 1.0  # Granite
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0  # logits are divided by it
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None

    @property
    def scale(self) -> float:
        """Attention score scale (1/sqrt(head_dim) unless given)."""
        return self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5

    def window_of(self, layer: int) -> int | None:
        """The sliding window of `layer`, or None when it attends globally."""
        return None if self.windows is None else self.windows[layer]

    def mixer_of(self, layer: int) -> str:
        """"attention", "short_conv", "mamba2" or "gated_deltanet"."""
        return "attention" if self.mixers is None else self.mixers[layer]

    def rope_of(self, layer: int) -> tuple[float, dict[str, Any] | None, int] | None:
        """(theta, scaling, rotated dims) of `layer`'s RoPE, or None when it has none (NoPE)."""
        if self.ropes is not None:
            return self.ropes[layer]
        return self.rope_theta, self.rope_scaling, self.head_dim


def decoder_config(model: "Model") -> DecoderConfig:
    """Plain numbers of a spec's `model` block (a resolved or an as-written `omnic.spec.Model`)."""
    scaling = None
    if model.rope.scaling is not None:
        scaling = model.rope.scaling.model_dump()
    moe = model.moe
    table = model.table
    ropes = tuple(None if r.rope is None else (
        r.rope.theta, None if r.rope.scaling is None else r.rope.scaling.model_dump(), r.rope.dims)
        for r in table)
    return DecoderConfig(
        vocab_size=model.vocab_size,
        d_model=model.d_model,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
        n_kv_heads=model.kv_heads,
        head_dim=model.dim_per_head,
        context_length=model.context_length,
        ffn_kind=model.ffn.kind,
        ffn_hidden=model.ffn.hidden,
        norm_kind=model.norm.kind,
        norm_eps=model.norm.eps,
        norm_unit_offset=model.norm.unit_offset,
        rope_theta=model.rope.theta,
        rope_scaling=scaling,
        tie_embeddings=model.tie_embeddings,
        qkv_bias=model.qkv_bias,
        qk_norm=model.qk_norm,
        # a window as long as the context hides nothing: such a layer attends globally (no
        # window mask, no ring) in every graph
        windows=tuple(r.window if r.window is not None and r.window < model.context_length
                      else None for r in table),
        ropes=ropes,
        mixers=tuple(r.attention if r.attention in STATE_KINDS else "attention" for r in table)
        if any(r.attention in STATE_KINDS for r in table) else None,
        conv_kernel=model.short_conv.kernel if model.short_conv is not None else 0,
        mamba2=None if model.mamba2 is None else (
            model.mamba2.heads, model.mamba2.head_dim, model.mamba2.d_state,
            model.mamba2.groups, model.mamba2.kernel, model.mamba2.conv_bias),
        deltanet=None if model.gated_deltanet is None else (
            model.gated_deltanet.key_heads, model.gated_deltanet.value_heads,
            model.gated_deltanet.key_dim, model.gated_deltanet.value_dim,
            model.gated_deltanet.kernel),
        attn_output_gate=model.attn_output_gate,
        moe_experts=moe.experts if moe else 0,
        moe_top_k=moe.top_k if moe else 0,
        moe_shared_experts=moe.shared_experts if moe else 0,
        moe_shared_hidden=moe.shared_hidden if moe else None,
        moe_normalize_top_k=moe.normalize_top_k if moe else True,
        scale_embeddings=model.scale_embeddings,
        post_norms=model.post_norms,
        pre_norms=model.pre_norms,
        qk_norm_full=model.qk_norm_width == "full",
        embedding_multiplier=model.embedding_multiplier or 1.0,
        residual_multiplier=model.residual_multiplier or 1.0,
        logits_scaling=model.logits_scaling or 1.0,
        attn_scale=model.attn_scale,
        attn_softcap=model.attn_softcap,
        final_softcap=model.final_softcap,
    )
