"""Quantization: a default weight scheme, ordered overrides, and the KV cache (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from omnic.spec.base import SpecModel

SchemeId = Literal["fp32", "fp16", "bf16", "int8", "int4"]
MethodId = Literal["rtn", "gptq", "awq", "awq_gptq"]
CALIBRATED = ("gptq", "awq", "awq_gptq")
RoleId = Literal[
    "embedding", "attention", "conv", "ffn", "router", "norm", "lm_head",
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
    method: MethodId = Field(
        "rtn",
        description="How the integer codes and scales are chosen: rtn (round to nearest), gptq "
        "(error-compensating rounding on calibration activations), awq (activation-aware "
        "per-channel scales folded into the preceding norm or projection, and clipping), or "
        "awq_gptq (both). Calibrated methods take int4 symmetric weights; the storage of "
        "every backend is unchanged.",
    )

    @model_validator(mode="after")
    def _group_rules(self) -> "WeightScheme":
        if self.method != "rtn" and (self.scheme != "int4" or not self.symmetric):
            raise ValueError(f"method {self.method} calibrates int4 symmetric weights; "
                             f"{self.scheme}{'' if self.symmetric else ' asymmetric'} takes rtn")
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
    reason: str | None = Field(
        None, description="Why this override exists (quantization: auto writes what it "
        "measured); shown by `omnic plan --explain-quant`.")


class Calibration(SpecModel):
    text: str = Field(
        "builtin",
        description="Calibration text: builtin (omnic's mixed corpus of prose, code and "
        "several languages, disjoint from the golden texts) or a UTF-8 file, relative to the "
        "spec's folder; passages are separated by a line '---'.",
    )
    samples: PositiveInt = Field(32, description="Windows of calibration tokens.")
    seq_len: PositiveInt = Field(256, description="Tokens per window.")
    seed: int = Field(0, description="Order of the passages before they are cut into windows.")


class Quantization(SpecModel):
    weights: WeightScheme = Field(
        default_factory=lambda: WeightScheme(scheme="fp32"),
        description="Default for matrix weights.",
    )
    overrides: tuple[Override, ...] = Field((), description="Ordered; the first match wins.")
    kv_cache: Literal["none", "int8"] = Field("none", description="KV cache storage.")
    calibration: Calibration | None = Field(
        None,
        description="Activations for calibrated methods (gptq, awq), collected once per build; "
        "the defaults apply when a calibrated method is asked for and this is null.",
    )

    def calibrated(self) -> bool:
        """True when the default or an override asks for a calibrated method."""
        return any(w.method in CALIBRATED for w in (self.weights, *self.overrides))

    @model_validator(mode="after")
    def _calibration_default(self) -> "Quantization":
        # the resolved spec says what ran: a calibrated method gets explicit calibration
        if self.calibration is None and self.calibrated():
            object.__setattr__(self, "calibration", Calibration())
        return self
