"""The text decoder: llama-family building blocks (torch-free)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from omnic.spec.base import SpecModel


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


class LinearScaling(SpecModel):
    kind: Literal["linear"] = Field(
        description="Position interpolation: positions divided by factor."
    )
    factor: float = Field(gt=0, description="Scaling factor (>0).")


class Llama3Scaling(SpecModel):
    kind: Literal["llama3"] = Field(description="Llama 3.1 frequency-dependent scaling.")
    factor: float = Field(gt=0, description="Scaling factor (8.0 for Llama 3.1, 32.0 for 3.2).")
    low_freq_factor: float = Field(1.0, gt=0, description="Low-frequency factor.")
    high_freq_factor: float = Field(4.0, gt=0, description="High-frequency factor.")
    original_context_length: PositiveInt = Field(
        8192, description="Context length the model was pre-trained with."
    )


class YarnScaling(SpecModel):
    kind: Literal["yarn"] = Field(
        description="YaRN: NTK-by-parts interpolation with attention scaling."
    )
    factor: float = Field(gt=0, description="Scaling factor.")
    original_context_length: PositiveInt = Field(description="Pre-training context length.")
    beta_fast: float = Field(32.0, gt=0, description="YaRN beta_fast.")
    beta_slow: float = Field(1.0, gt=0, description="YaRN beta_slow.")
    attention_factor: float | None = Field(
        None, description="Attention temperature; null means 0.1*ln(factor)+1."
    )


RopeScaling = Annotated[
    Union[LinearScaling, Llama3Scaling, YarnScaling], Field(discriminator="kind")
]


class Rope(SpecModel):
    theta: PositiveFloat = Field(10000.0, description="RoPE base frequency.")
    scaling: RopeScaling | None = Field(None, description="Optional context-extension scaling.")


class SlidingWindow(SpecModel):
    size: PositiveInt = Field(description="Tokens each query may attend back to (itself included).")
    layers: Literal["all", "even"] = Field(
        "all",
        description="all: every layer (Mistral); even: layers 0, 2, 4... slide and the others are "
        "global (Gemma 2).",
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
    qk_norm: bool = Field(False, description="RMSNorm over each head of q and k (Qwen3).")
    sliding_window: SlidingWindow | None = Field(None, description="Sliding-window attention.")
    moe: MoE | None = Field(None, description="Mixture-of-experts feed-forward in every layer.")
    scale_embeddings: bool = Field(
        False, description="Multiply embeddings by sqrt(d_model) (Gemma)."
    )
    post_norms: bool = Field(
        False, description="Extra norms after attention and after the FFN (Gemma 2 sandwich)."
    )
    attn_scale: PositiveFloat | None = Field(
        None, description="Attention score scale; null = 1/sqrt(head_dim)."
    )
    attn_softcap: PositiveFloat | None = Field(
        None, description="tanh soft-cap of attention scores (Gemma 2)."
    )
    final_softcap: PositiveFloat | None = Field(
        None, description="tanh soft-cap of logits (Gemma 2)."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> "Model":
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads={kv} does not divide n_heads={self.n_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}; set head_dim"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads
