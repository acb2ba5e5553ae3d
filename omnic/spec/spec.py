"""The top-level spec: one YAML file says what the model is, how it is compressed, where it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from omnic.spec.base import SpecModel
from omnic.spec.device import Device
from omnic.spec.modalities import Modalities
from omnic.spec.model import Model
from omnic.spec.quant import Quantization
from omnic.spec.sources import ByteTokenizer, RandomWeights, Tokenizer, Weights
from omnic.spec.targets import Golden, Targets


def _extends_may_supply_required(schema: dict) -> None:
    """In the JSON Schema, a spec with `extends:` may leave the required sections to the files it
    extends (the merged result is checked by `omnic validate`); one without must have them all."""
    required = schema.pop("required", [])
    standalone = [k for k in required if k not in ("omnic", "name")]
    schema["required"] = [k for k in required if k in ("omnic", "name")]
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {"required": standalone}


class Spec(SpecModel):
    """A user spec, as written (presets may still be named by string)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True,
        json_schema_extra=_extends_may_supply_required,
    )

    omnic: Literal[1] = Field(description="Spec format version.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64,
        description="Build name: letters, digits, '.', '_' and '-'.",
    )
    extends: tuple[str, ...] = Field(
        (),
        description="Spec or preset files merged underneath this one, in order (paths relative to "
        "this file). Mappings merge key by key; any other value, lists included, is replaced "
        "whole by the later file; this file wins over all it extends.",
    )
    device: str | Device = Field(description="A device preset name or an inline device block.")
    model: str | Model = Field(description="A model preset name or an inline decoder block.")
    modalities: Modalities = Field(default_factory=Modalities, description="Optional encoders.")
    weights: Weights = Field(
        default_factory=lambda: RandomWeights(source="random", seed=0), description="Weight source."
    )
    tokenizer: Tokenizer = Field(
        default_factory=lambda: ByteTokenizer(kind="byte"), description="Tokenizer."
    )
    quantization: str | Quantization = Field(
        default_factory=Quantization,
        description="A quant preset name, an inline block, or `auto`: the preset with the best "
        "measured quality (KL divergence vs fp32 on calibration text) that fits the device and "
        "every enabled target carries, decided at compile, with its most sensitive int4 "
        "matrices kept at int8 within the budget; validate and plan use the largest eligible "
        "preset.",
    )
    targets: Targets = Field(description="Backends to build; each present key is built.")
    golden: Golden = Field(default_factory=Golden, description="Golden conformance settings.")


class ResolvedSpec(Spec):
    """A spec with every preset inlined and every derived value explicit (no None left implicit).

    This is what the compiler consumes and what the manifest records verbatim.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, json_schema_extra=None
    )

    extends: tuple[str, ...] = Field((), description="Always empty once resolved.")
    device: Device = Field(description="The device, inlined.")
    model: Model = Field(description="The decoder, with n_kv_heads and head_dim filled in.")
    quantization: Quantization = Field(description="The quantization, inlined.")
