"""Rotary position embedding in the Hugging Face "rotate_half" (NeoX) convention.

The frequencies follow transformers' `ROPE_INIT_FUNCTIONS` operation for operation (float32
throughout), so imported checkpoints reproduce transformers' cos/sin tables exactly.
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_rope_utils.py
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _base_inv_freq(dim: int, theta: float) -> torch.Tensor:
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float) / dim
    return 1.0 / (theta**exponent)


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    # ref: modeling_rope_utils._compute_llama3_parameters
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_context_length"]
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn(dim: int, theta: float, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    # ref: modeling_rope_utils._compute_yarn_parameters (truncate=True, no mscale/mscale_all_dim)
    factor = s["factor"]
    original = s["original_context_length"]
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # prevent a division by zero, as transformers does
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low)
                       / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2, device="cpu").to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, float(attention_factor)


def _longrope(dim: int, theta: float, s: dict[str, Any],
              context_length: int | None) -> tuple[torch.Tensor, float]:
    # ref: modeling_rope_utils._compute_longrope_parameters. transformers switches to the long
    # factors once a sequence passes the original context; a static graph chooses once, by its
    # context length, as llama.cpp does (n_ctx > n_ctx_orig -> long).
    original, factor = s["original_context_length"], s["factor"]
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        attention_factor = (1.0 if factor <= 1.0
                            else math.sqrt(1 + math.log(factor) / math.log(original)))
    long = context_length is not None and context_length > original
    ext = torch.tensor(s["long_factor"] if long else s["short_factor"], dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (ext * theta**shape), float(attention_factor)


def rope_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None,
    context_length: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] (float32, CPU) and the cos/sin attention factor.

    Args:
        head_dim: rotary width (the whole head, or the rotated part of a partial rotary).
        theta: base frequency.
        scaling: None or {"kind": "linear"|"llama3"|"yarn"|"longrope", "factor": ..., ...} with
            the field names of `omnic.spec.rope.*Scaling`.
        context_length: the static context (longrope chooses its short or long factors by it).
    """
    if scaling is None:
        return _base_inv_freq(head_dim, theta), 1.0
    kind = scaling["kind"]
    if kind == "linear":
        return _base_inv_freq(head_dim, theta) / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3(_base_inv_freq(head_dim, theta), scaling), 1.0
    if kind == "yarn":
        return _yarn(head_dim, theta, scaling)
    if kind == "longrope":
        return _longrope(head_dim, theta, scaling, context_length)
    raise ValueError(f"unknown rope scaling kind {kind!r}")


class Rope(nn.Module):
    """cos/sin tables for positions [0, context_length) and the rotation itself.

    The tables are non-persistent float32 buffers built on the CPU even when the decoder is
    constructed on the meta device (they are computed, not loaded).
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None,
                 context_length: int) -> None:
        super().__init__()
        inv_freq, attention_factor = rope_frequencies(head_dim, theta, scaling, context_length)
        positions = torch.arange(context_length, dtype=torch.float32, device="cpu")
        # transformers computes inv_freq @ positions as a matmul with inner size 1, i.e. exactly
        # one float32 product per element, which this outer product reproduces bit for bit.
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * attention_factor, persistent=False)
        self.register_buffer("sin", emb.sin() * attention_factor, persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin gathered at `positions` (any int64 shape) -> shape + [head_dim]."""
        return self.cos[positions], self.sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] by cos/sin broadcastable to [B, 1, T, d]: the first d dims of each
    head when d < hd (partial rotary, transformers' Phi-3), the rest passing through."""
    d = cos.shape[-1]
    if d != x.shape[-1]:
        return torch.cat((apply_rope(x[..., :d], cos, sin), x[..., d:]), dim=-1)
    return (x * cos.to(x.dtype)) + (rotate_half(x) * sin.to(x.dtype))
