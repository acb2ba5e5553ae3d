"""Which storage scheme every tensor gets: the default, or the first override that matches.

Torch-free: the memory plan, validation, the quantization passes and every target read the same
answer from here. Only matrices (`TensorInfo.is_matrix`) are quantized; norms and biases stay fp32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from omnic.constants import Schemes
from omnic.spec.inventory import TensorInfo, decoder_tensors

if TYPE_CHECKING:
    from omnic.spec import Match, Quantization, ResolvedSpec


@dataclass(frozen=True)
class TensorScheme:
    """How one tensor is stored.

    Attributes:
        scheme: one of `omnic.constants.Schemes` (fp32, fp16, bf16, int8, int4).
        group_size: elements sharing one scale along the input dimension; None means one scale
            per output channel for int8, and nothing for float schemes.
        symmetric: no zero point when True.
        override: index into `quantization.overrides` of the override that chose this scheme, or
            None when the default (or the fp32 rule for non-matrices) applies.
    """

    scheme: str
    group_size: int | None
    symmetric: bool
    override: int | None = None


FP32 = TensorScheme(Schemes.FP32, None, True, None)


def storage_id(ts: TensorScheme) -> str:
    """A short name for a storage type: fp32, fp16, bf16, int8_channel, int8_g32, int4_g32_asym."""
    if ts.scheme in (Schemes.FP32, Schemes.FP16, Schemes.BF16):
        return ts.scheme
    out = f"{ts.scheme}_g{ts.group_size}" if ts.group_size else f"{ts.scheme}_channel"
    return out if ts.symmetric else out + "_asym"


def matches(match: "Match", tensor: TensorInfo) -> bool:
    """True when every key given in `match` matches the tensor (name is a full-match regex)."""
    if match.name is not None and re.fullmatch(match.name, tensor.name) is None:
        return False
    if match.role is not None and match.role != tensor.role:
        return False
    if match.layers is not None:
        first, last = match.layers
        if tensor.layer is None or not first <= tensor.layer <= last:
            return False  # tensors outside any layer (embedding, final norm) never match a range
    return True


def scheme_for(quant: "Quantization", tensor: TensorInfo) -> TensorScheme:
    """The scheme of one tensor under `quant` (first matching override wins)."""
    if not tensor.is_matrix:
        return FP32
    for index, override in enumerate(quant.overrides):
        if matches(override.match, tensor):
            return TensorScheme(override.scheme, override.group_size, override.symmetric, index)
    w = quant.weights
    return TensorScheme(w.scheme, w.group_size, w.symmetric, None)


def method_for(quant: "Quantization", tensor: TensorInfo) -> str:
    """How the codes of one tensor are chosen (rtn, gptq, awq, awq_gptq), by the same first
    match as `scheme_for`."""
    if not tensor.is_matrix:
        return "rtn"
    for override in quant.overrides:
        if matches(override.match, tensor):
            return override.method
    return quant.weights.method


def tensor_schemes(
    spec: "ResolvedSpec", tensors: Iterable[TensorInfo] | None = None
) -> dict[str, TensorScheme]:
    """The storage scheme of every decoder tensor, in inventory order.

    Args:
        spec: a resolved spec (its `quantization` is inlined).
        tensors: the inventory to decide for; defaults to `decoder_tensors(spec.model)`.

    Returns:
        tensor name -> TensorScheme, for every tensor of the inventory.
    """
    inventory = decoder_tensors(spec.model) if tensors is None else tensors
    return {t.name: scheme_for(spec.quantization, t) for t in inventory}


def unused_overrides(quant: "Quantization", tensors: Iterable[TensorInfo]) -> list[int]:
    """Indices of overrides that choose no tensor (they match nothing, or only tensors that an
    earlier override already took, or only non-matrices)."""
    used = {scheme_for(quant, t).override for t in tensors}
    return [i for i in range(len(quant.overrides)) if i not in used]
