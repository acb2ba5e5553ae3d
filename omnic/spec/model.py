"""The text decoder: llama-family building blocks (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import (Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator,
                      model_validator)

from omnic.spec.base import SpecModel
from omnic.spec.layers import (Layer, LayerKind, PatternError, check_pattern, check_table,
                               table)
from omnic.spec.rope import Rope


class FFN(SpecModel):
    kind: Literal["swiglu", "geglu", "gelu"] = Field(
        description="swiglu: down(silu(gate(x)) * up(x)) (Llama); geglu: the same with tanh-GELU "
        "(Gemma); gelu: down(gelu(up(x))) with no gate (GPT-2/Phi-2 style)."
    )
    hidden: PositiveInt = Field(description="Inner width of the feed-forward block.")


class Norm(SpecModel):
    kind: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="Normalisation kind.")
    eps: PositiveFloat = Field(1e-5, description="Epsilon added to the variance.")
    unit_offset: bool = Field(
        False, description="Gemma-style: the stored weight w is applied as (1 + w)."
    )


class SlidingWindow(SpecModel):
    size: PositiveInt = Field(description="Tokens each query may attend back to (itself included).")
    layers: Literal["all", "even"] | None = Field(
        None,
        description="Shortcut for which layers slide: all (Mistral); even: layers 0, 2, 4... "
        "slide and the others are global (Gemma 2); null: all, unless model.layer_pattern says.",
    )


class MoE(SpecModel):
    experts: PositiveInt = Field(description="Number of routed experts.")
    top_k: PositiveInt = Field(description="Experts each token is routed to.")
    shared_experts: int = Field(0, ge=0, description="Always-on experts (Qwen-MoE/DeepSeek style).")
    shared_hidden: PositiveInt | None = Field(
        None, description="Inner width of the shared expert block; null means ffn.hidden."
    )
    normalize_top_k: bool = Field(
        True, description="Renormalise the top-k routing weights to sum to one (Mixtral)."
    )

    @model_validator(mode="after")
    def _top_k_fits(self) -> "MoE":
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} exceeds experts={self.experts}")
        return self


class ShortConv(SpecModel):
    """LFM2's gated short convolution: in_proj makes B, C and x; y = out_proj(C * conv(B * x)),
    a causal depthwise convolution over the last `kernel` tokens."""

    kernel: int = Field(3, ge=2, le=16, description="Tokens the convolution spans, the current "
                        "one included (LFM2: conv_L_cache = 3). The state keeps kernel - 1.")


class Mamba2(SpecModel):
    """A Mamba-2 state-space layer (Granite 4): in_proj makes the gate z, the stream x, B, C
    (`groups` of `d_state` each) and one time step per head; x, B and C go through a causal
    depthwise convolution with SiLU, then the selective scan
    h_t = exp(dt_t * A) h_{t-1} + dt_t x_t B_t, y_t = C_t h_t + D x_t, then a gated RMSNorm
    (over `groups` groups) and out_proj. The inner width is heads * head_dim."""

    heads: PositiveInt = Field(description="SSM heads, each with its own decay A and time step "
                               "(mamba_n_heads).")
    head_dim: PositiveInt = Field(description="Channels per head (mamba_d_head).")
    d_state: PositiveInt = Field(description="State size per channel (mamba_d_state).")
    groups: PositiveInt = Field(1, description="Groups sharing B and C, and the gated norm's "
                                "groups (mamba_n_groups); divides heads.")
    kernel: int = Field(4, ge=2, le=16, description="Tokens the convolution spans, the current "
                        "one included (mamba_d_conv). The state keeps kernel - 1.")
    conv_bias: bool = Field(True, description="The convolution has a bias (mamba_conv_bias).")

    @model_validator(mode="after")
    def _groups_divide(self) -> "Mamba2":
        if self.heads % self.groups:
            raise ValueError(f"groups={self.groups} does not divide heads={self.heads}")
        return self

    @property
    def inner(self) -> int:
        """The inner width: heads * head_dim."""
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        """Channels of the convolution (x, B and C): inner + 2 * groups * d_state."""
        return self.inner + 2 * self.groups * self.d_state

    @property
    def state_numel(self) -> int:
        """Numbers one layer's state holds: the convolution's (kernel - 1) per channel and the
        recurrent state's heads * head_dim * d_state."""
        return (self.kernel - 1) * self.conv_channels + self.inner * self.d_state


class GatedDeltaNet(SpecModel):
    """A Gated DeltaNet linear-attention layer (Qwen3.5): qkv makes q, k (key_heads of key_dim)
    and v (value_heads of value_dim), which go through a causal depthwise convolution with SiLU;
    q and k are L2-normalised, and each value head keeps a state S [key_dim, value_dim] updated
    by the gated delta rule S = exp(g) S + k ((v - (exp(g) S)^T k) beta)^T, read as o = S^T q;
    then a gated RMSNorm per head (silu(z)) and out_proj."""

    key_heads: PositiveInt = Field(description="Query/key heads (linear_num_key_heads); each "
                                   "serves value_heads / key_heads value heads.")
    value_heads: PositiveInt = Field(description="Value heads, each with its own state, decay "
                                     "and beta (linear_num_value_heads).")
    key_dim: PositiveInt = Field(description="Query/key width per head (linear_key_head_dim).")
    value_dim: PositiveInt = Field(description="Value width per head (linear_value_head_dim).")
    kernel: int = Field(4, ge=2, le=16, description="Tokens the convolution spans, the current "
                        "one included (linear_conv_kernel_dim). The state keeps kernel - 1.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "GatedDeltaNet":
        if self.value_heads % self.key_heads:
            raise ValueError(f"key_heads={self.key_heads} does not divide "
                             f"value_heads={self.value_heads}")
        return self

    @property
    def key_width(self) -> int:
        """key_heads * key_dim: the width of q and of k."""
        return self.key_heads * self.key_dim

    @property
    def value_width(self) -> int:
        """value_heads * value_dim: the width of v, z and the output."""
        return self.value_heads * self.value_dim

    @property
    def conv_channels(self) -> int:
        """Channels of the convolution (q, k and v): 2 * key_width + value_width."""
        return 2 * self.key_width + self.value_width

    @property
    def state_numel(self) -> int:
        """Numbers one layer's state holds: the convolution's (kernel - 1) per channel and one
        key_dim x value_dim matrix per value head."""
        return ((self.kernel - 1) * self.conv_channels
                + self.value_heads * self.key_dim * self.value_dim)


class Model(SpecModel):
    """A decoder-only transformer built from llama-family blocks."""

    vocab_size: PositiveInt = Field(description="Number of token ids.")
    d_model: PositiveInt = Field(description="Hidden width.")
    n_layers: PositiveInt = Field(description="Number of transformer blocks.")
    n_heads: PositiveInt = Field(description="Query heads.")
    n_kv_heads: PositiveInt | None = Field(
        None,
        description="Key/value heads: n_heads for MHA, fewer for GQA, 1 for MQA. null = n_heads.",
    )
    head_dim: PositiveInt | None = Field(
        None, description="Per-head width; null = d_model / n_heads."
    )
    ffn: FFN = Field(description="Feed-forward block.")
    norm: Norm = Field(default_factory=Norm, description="Normalisation used throughout.")
    rope: Rope = Field(default_factory=Rope, description="Rotary position embedding.")
    context_length: PositiveInt = Field(
        description="Maximum sequence length (static KV cache size)."
    )
    tie_embeddings: bool = Field(False, description="lm_head shares the embedding matrix.")
    qkv_bias: bool = Field(False, description="Biases on the q, k and v projections (Qwen2).")
    qk_norm: bool = Field(False, description="RMSNorm of q and k before RoPE (Qwen3, Gemma 3, "
                          "OLMo 2).")
    qk_norm_width: Literal["head", "full"] = Field(
        "head", description="head: one norm over each head's dims, shared by the heads (Qwen3, "
        "Gemma 3); full: one norm over all of q's (and k's) heads at once (OLMo 2).")
    sliding_window: SlidingWindow | None = Field(None, description="Sliding-window attention.")
    layer_pattern: str | list[LayerKind] | None = Field(
        None, description="Which layers differ: a pattern such as \"5 sliding : 1 full\" "
        "(repeated from layer 0; it must divide n_layers unless it ends with '...') or one kind "
        "per layer; kinds: full, sliding (sliding_window.size), nope (full attention, no RoPE), "
        "short_conv (model.short_conv, no attention), mamba2 (model.mamba2, no attention), "
        "gated_deltanet (model.gated_deltanet, no attention).")
    layers: list[Layer] | None = Field(
        None, description="The explicit per-layer table (attention kind, window, RoPE). `omnic "
        "resolve` writes it from layer_pattern, sliding_window and rope; written by hand it must "
        "equal what those fields (defaults included) make.")
    moe: MoE | None = Field(None, description="Mixture-of-experts feed-forward in every layer.")
    short_conv: ShortConv | None = Field(
        None, description="The gated short convolution of the layers whose kind is short_conv "
        "(LFM2); null when no layer is.")
    mamba2: Mamba2 | None = Field(
        None, description="The Mamba-2 state-space layer of the layers whose kind is mamba2 "
        "(Granite 4); null when no layer is.")
    gated_deltanet: GatedDeltaNet | None = Field(
        None, description="The Gated DeltaNet layer of the layers whose kind is gated_deltanet "
        "(Qwen3.5); null when no layer is.")
    attn_output_gate: bool = Field(
        False, description="The attention layers gate their output per channel by "
        "sigmoid(x W_gate) before the o projection (Qwen3.5, Qwen3-Next).")
    scale_embeddings: bool = Field(
        False, description="Multiply embeddings by sqrt(d_model) (Gemma)."
    )
    post_norms: bool = Field(
        False, description="Extra norms after attention and after the FFN (Gemma 2 sandwich)."
    )
    pre_norms: bool = Field(
        True, description="Norms before attention and before the FFN; false with post_norms is "
        "OLMo 2's post-norm block.")
    embedding_multiplier: PositiveFloat | None = Field(
        None, description="Embeddings multiplied by this (Granite); null: 1.")
    residual_multiplier: PositiveFloat | None = Field(
        None, description="Each block's attention and FFN output multiplied by this before the "
        "residual add (Granite); null: 1.")
    logits_scaling: PositiveFloat | None = Field(
        None, description="Logits divided by this (Granite); null: 1.")
    attn_scale: PositiveFloat | None = Field(
        None, description="Attention score scale; null = 1/sqrt(head_dim)."
    )
    attn_softcap: PositiveFloat | None = Field(
        None, description="tanh soft-cap of attention scores (Gemma 2)."
    )
    final_softcap: PositiveFloat | None = Field(
        None, description="tanh soft-cap of logits (Gemma 2)."
    )

    @field_validator("layer_pattern")
    @classmethod
    def _pattern_fits(cls, value, info: ValidationInfo):
        n = info.data.get("n_layers")
        if value is not None and n is not None:
            try:
                check_pattern(value, n)
            except PatternError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("layers")
    @classmethod
    def _table_fits(cls, value, info: ValidationInfo):
        n = info.data.get("n_layers")
        if value is not None and n is not None and len(value) != n:
            raise ValueError(f"{len(value)} rows for n_layers={n}")
        return value

    @model_validator(mode="after")
    def _heads_divide(self) -> "Model":
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads={kv} does not divide n_heads={self.n_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}; set head_dim"
            )
        if not self.pre_norms and not self.post_norms:
            raise ValueError("pre_norms: a block needs pre_norms or post_norms (both are false)")
        check_table(self)
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def table(self) -> list[Layer]:
        """The per-layer table (`model.layers`, or what the pattern and shortcuts make)."""
        return table(self)
