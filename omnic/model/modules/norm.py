"""RMSNorm and LayerNorm, optionally with the Gemma unit offset (weight applied as 1 + w)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, computed in float32 as transformers' LlamaRMSNorm does.

    With `unit_offset` the stored weight w is applied as (1 + w), as GemmaRMSNorm does; the
    product is then taken in float32 before casting back (Gemma's order), otherwise the
    normalised input is cast back first and then scaled (Llama's order).
    """

    # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py
    #      (LlamaRMSNorm)
    # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/gemma/modeling_gemma.py
    #      (GemmaRMSNorm)

    def __init__(self, width: int, eps: float, unit_offset: bool = False, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, device=device))
        self.eps = eps
        self.unit_offset = unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (h * (1.0 + self.weight.float())).to(dtype)
        return self.weight * h.to(dtype)


class LayerNorm(nn.Module):
    """torch LayerNorm with weight and bias (weight applied as 1 + w with `unit_offset`)."""

    def __init__(self, width: int, eps: float, unit_offset: bool = False, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, device=device))
        self.bias = nn.Parameter(torch.zeros(width, device=device))
        self.eps = eps
        self.unit_offset = unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = 1.0 + self.weight if self.unit_offset else self.weight
        return F.layer_norm(x, (x.shape[-1],), w, self.bias, self.eps)


def make_norm(kind: str, width: int, eps: float, unit_offset: bool, device=None) -> nn.Module:
    """A norm module of `kind` ('rmsnorm' or 'layernorm')."""
    if kind == "rmsnorm":
        return RMSNorm(width, eps, unit_offset, device)
    if kind == "layernorm":
        return LayerNorm(width, eps, unit_offset, device)
    raise ValueError(f"unknown norm kind {kind!r}")
