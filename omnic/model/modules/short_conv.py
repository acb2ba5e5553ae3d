"""LFM2's gated short convolution: a token mixer with a fixed-size state instead of a KV cache.

in_proj makes three streams B, C and x; B * x goes through a causal depthwise convolution over
the last `kernel` tokens, and C gates its output: y = out_proj(C * conv(B * x)). The state is the
last kernel - 1 values of B * x, [batch, d_model, kernel - 1]: a call prepends it to its tokens'
B * x, convolves without padding (one output per token) and returns the last kernel - 1 values
as the next state, so prefill and one-token decode are the same computation.
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/lfm2/modeling_lfm2.py
(Lfm2ShortConv, causal_conv1d_fn / causal_conv1d_update)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """in_proj [3d, d], a depthwise kernel [d, 1, kernel] and out_proj [d, d], no biases."""

    def __init__(self, d_model: int, kernel: int, device=None) -> None:
        super().__init__()
        self.d_model, self.kernel_size = d_model, kernel
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=False, device=device)
        self.kernel = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=False,
                                device=device)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, device=device)

    def empty_state(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The state before the first token: zeros, as causal padding would be."""
        return torch.zeros(batch, self.d_model, self.kernel_size - 1, dtype=dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d] and the state [B, d, kernel - 1] -> (y [B, T, d], the next state)."""
        b, c, xs = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # each [B, d, T]
        seq = torch.cat((state.to(x.dtype), b * xs), dim=2)  # [B, d, kernel - 1 + T]
        conv = F.conv1d(seq, self.kernel.weight, groups=self.d_model)  # [B, d, T]
        y = self.out_proj((c * conv).transpose(1, 2))
        # the last kernel - 1 values, gathered by a static-length index so that the next state's
        # shape stays static in exported graphs (a slice from a token-dependent start does not:
        # Core ML's states refuse a symbolic shape)
        last = torch.arange(self.kernel_size - 1, device=seq.device) + (seq.shape[2] + 1
                                                                         - self.kernel_size)
        return y, seq.index_select(2, last).to(state.dtype)
