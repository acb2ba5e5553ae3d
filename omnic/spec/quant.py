"""Quantization: a default weight scheme, ordered overrides, and the KV cache (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from omnic.spec.base import SpecModel

SchemeId = Literal["fp32", "fp16", "bf16", "int8", "int4"]
RoleId = Literal[
    "embedding", "attention", "ffn", "router", "norm", "lm_head",
    "vision", "audio", "sensors", "projector", "action",
]


class WeightScheme(SpecModel):
    scheme: SchemeId = Field(description="Storage of matrix weights.")
    group_size: PositiveInt | None = Field(
        None,
        description="Elements sharing one scale along the input dimension. Required for int4 "
        "(32, 64, 128...); for int8 null means one scale per output channel.",
    )
    symmetric: bool = Field(True, description="Symmetric (no zero point) or asymmetric.")

    @model_validator(mode="after")
    def _group_rules(self) -> "WeightScheme":
        if self.scheme == "int4" and self.group_size is None:
            raise ValueError("int4 needs a group_size (for example 32)")
        if self.scheme in ("fp32", "fp16", "bf16") and self.group_size is not None:
            raise ValueError(f"{self.scheme} takes no group_size")
        return self


class Match(SpecModel):
    name: str | None = Field(None, description="Regular expression, full match on the tensor name.")
    role: RoleId | None = Field(None, description="Tensor role.")
    layers: tuple[int, int] | None = Field(
        None, description="Inclusive layer range [first, last]; tensors outside layers never match."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> "Match":
        if self.name is None and self.role is None and self.layers is None:
            raise ValueError("a match needs at least one of name, role, layers")
        if self.name is not None:
            import re

            try:
                re.compile(self.name)
            except re.error as err:
                raise ValueError(f"name is not a valid regular expression: {err}") from None
        if self.layers is not None and self.layers[0] > self.layers[1]:
            raise ValueError(f"layers range {list(self.layers)} is reversed")
        return self


class Override(WeightScheme):
    match: Match = Field(
        description="Which tensors this override applies to (all keys must match)."
    )


class Quantization(SpecModel):
    weights: WeightScheme = Field(
        default_factory=lambda: WeightScheme(scheme="fp32"),
        description="Default for matrix weights.",
    )
    overrides: tuple[Override, ...] = Field((), description="Ordered; the first match wins.")
    kv_cache: Literal["none", "int8"] = Field("none", description="KV cache storage.")
