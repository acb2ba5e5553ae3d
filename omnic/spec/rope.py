"""Rotary position embedding: base, context-extension scaling, per-kind bases (torch-free)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat, PositiveInt

from omnic.spec.base import SpecModel


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


class LongRopeScaling(SpecModel):
    kind: Literal["longrope"] = Field(
        description="LongRoPE (Phi-3.5/Phi-4-mini): per-frequency divisors, the short list up to "
        "original_context_length, the long list beyond it; attention scaled by "
        "sqrt(1 + ln(factor) / ln(original_context_length)).")
    short_factor: list[PositiveFloat] = Field(
        description="One divisor per rotated pair, used when context_length <= "
        "original_context_length.")
    long_factor: list[PositiveFloat] = Field(
        description="One divisor per rotated pair, used when context_length is longer (the "
        "static choice llama.cpp makes).")
    factor: float = Field(gt=0, description="Context extension: max_position_embeddings / "
                          "original_context_length of the checkpoint.")
    original_context_length: PositiveInt = Field(description="Pre-training context length.")
    attention_factor: float | None = Field(
        None, description="cos/sin scale; null means sqrt(1 + ln(factor) / ln(original)), 1 when "
        "factor <= 1.")


RopeScaling = Annotated[
    Union[LinearScaling, Llama3Scaling, YarnScaling, LongRopeScaling], Field(discriminator="kind")
]


class RopeBase(SpecModel):
    theta: PositiveFloat = Field(description="RoPE base frequency.")
    scaling: RopeScaling | None = Field(None, description="Optional context-extension scaling.")


class Rope(SpecModel):
    theta: PositiveFloat = Field(10000.0, description="RoPE base frequency (of full-attention "
                                 "layers when `sliding` is given).")
    scaling: RopeScaling | None = Field(None, description="Optional context-extension scaling.")
    sliding: RopeBase | None = Field(
        None, description="RoPE of the sliding-window layers when it differs (Gemma 3: base 10000 "
        "locally, 1e6 globally); null: the same as the full layers.")
    rotary_dim: PositiveInt | None = Field(
        None, description="Partial rotary: only the first rotary_dim dims of each head rotate "
        "(Phi-4-mini: 96 of 128); null: the whole head.")


