"""A Mamba-2 state-space layer (Granite 4): a token mixer with a fixed-size state.

in_proj makes the gate z, the stream x, B and C (`groups` of `d_state` each) and a time step per
head. x, B and C go through a causal depthwise convolution with a bias and SiLU; per head h with
decay A_h = -exp(A_log_h) and dt = softplus(dt_raw + dt_bias), the selective scan is

    s_t = exp(dt_t A_h) s_{t-1} + dt_t x_t B_t^T        y_t = s_t C_t + D_h x_t

(s [head_dim, d_state]). y is gated by SiLU(z), normalised by a grouped RMSNorm and projected by
out_proj. The state is the convolution's last kernel - 1 inputs [B, channels, kernel - 1] and
s [B, heads, head_dim, d_state].

A call runs its T tokens in the parallel (state-space duality) form as one chunk: with
c_t = sum_{k<=t} dt_k A, y_i = sum_{j<=i} exp(c_i - c_j) (C_i . B_j) dt_j x_j
+ exp(c_i) s_0 C_i + D x_i, and the next state is
exp(c_T) s_0 + sum_j exp(c_T - c_j) dt_j x_j B_j^T.
For one token this is the recurrence itself, so prefill and decode are the same computation;
the cost of a call grows with T^2, which a runner bounds by prefilling in slices.
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/granitemoehybrid/modeling_granitemoehybrid.py
(GraniteMoeHybridMambaLayer.torch_forward, segment_sum, GraniteMoeHybridRMSNormGated)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mamba2(nn.Module):
    """in_proj [2 * inner + 2 * groups * d_state + heads, d], the depthwise convolution
    [channels, 1, kernel] (+ bias), A_log / D / dt_bias [heads], the gated norm [inner] and
    out_proj [d, inner]; no projection biases."""

    def __init__(self, d_model: int, heads: int, head_dim: int, d_state: int, groups: int,
                 kernel: int, conv_bias: bool, eps: float, device=None) -> None:
        super().__init__()
        self.heads, self.head_dim, self.d_state, self.groups = heads, head_dim, d_state, groups
        self.kernel_size, self.eps = kernel, eps
        self.inner = heads * head_dim
        self.channels = self.inner + 2 * groups * d_state
        self.in_proj = nn.Linear(d_model, self.inner + self.channels + heads, bias=False,
                                 device=device)
        self.conv = nn.Conv1d(self.channels, self.channels, kernel, groups=self.channels,
                              bias=conv_bias, device=device)
        self.dt_bias = nn.Parameter(torch.ones(heads, device=device))
        self.A_log = nn.Parameter(torch.zeros(heads, device=device))
        self.D = nn.Parameter(torch.ones(heads, device=device))
        self.norm = _GatedNorm(self.inner, groups, eps, device)
        self.out_proj = nn.Linear(self.inner, d_model, bias=False, device=device)

    def empty_state(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The states before the first token: zeros (the convolution's causal padding, s_0)."""
        return (torch.zeros(batch, self.channels, self.kernel_size - 1, dtype=dtype),
                torch.zeros(batch, self.heads, self.head_dim, self.d_state, dtype=dtype))

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, d] and the two states -> (y [B, T, d], the next conv state, the next s)."""
        bsz, t, _ = x.shape
        z, xbc, dt = self.in_proj(x).split([self.inner, self.channels, self.heads], dim=-1)
        seq = torch.cat((conv_state.to(x.dtype), xbc.transpose(1, 2)), dim=2)
        xbc = F.silu(F.conv1d(seq, self.conv.weight, self.conv.bias, groups=self.channels))
        xs, b, c = xbc.transpose(1, 2).split(
            [self.inner, self.groups * self.d_state, self.groups * self.d_state], dim=-1)
        xs = xs.reshape(bsz, t, self.heads, self.head_dim).float()
        b, c = self._per_head(b, t), self._per_head(c, t)  # [B, T, H, N]
        dt = F.softplus(dt.float() + self.dt_bias.float())  # [B, T, H]
        log_decay = (dt * -torch.exp(self.A_log.float())).transpose(1, 2)  # [B, H, T]
        seg = _segment_sum(log_decay)  # [B, H, T(i), T(j)]: c_i - c_j below the diagonal
        causal = _causal(t, x.device)
        weights = torch.exp(seg) * causal * torch.einsum("bihn,bjhn->bhij", c, b)
        xdt = xs * dt[..., None]  # [B, T, H, P]
        s0 = ssm_state.float()
        cum = torch.cumsum(log_decay, dim=-1)  # [B, H, T]: c_t
        y = (torch.einsum("bhij,bjhp->bihp", weights, xdt)
             + torch.einsum("bihn,bhpn->bihp", c, s0) * torch.exp(cum).transpose(1, 2)[..., None]
             + xs * self.D.float()[:, None])
        to_end = torch.exp(seg[..., -1, :]).transpose(1, 2)  # [B, T, H]: exp(c_T - c_j)
        s = (s0 * torch.exp(cum[..., -1])[..., None, None]
             + torch.einsum("bjh,bjhp,bjhn->bhpn", to_end, xdt, b))
        y = self.norm(y.reshape(bsz, t, self.inner), z)
        last = torch.arange(self.kernel_size - 1, device=seq.device) + (seq.shape[2] + 1
                                                                         - self.kernel_size)
        return (self.out_proj(y.to(x.dtype)), seq.index_select(2, last).to(conv_state.dtype),
                s.to(ssm_state.dtype))

    def _per_head(self, m: torch.Tensor, t: int) -> torch.Tensor:
        """[B, T, groups * N] -> [B, T, heads, N]: each group's B or C serves heads / groups
        consecutive heads."""
        bsz = m.shape[0]
        rep = self.heads // self.groups
        m = m.reshape(bsz, t, self.groups, 1, self.d_state).float()
        return m.expand(bsz, t, self.groups, rep, self.d_state).reshape(
            bsz, t, self.heads, self.d_state)


class _GatedNorm(nn.Module):
    """RMSNorm of y * SiLU(z) over each of `groups` groups of channels, times a weight."""

    def __init__(self, width: int, groups: int, eps: float, device=None) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(width, device=device))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y.float() * F.silu(z.float())
        *lead, width = h.shape
        g = h.reshape(*lead, self.groups, width // self.groups)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.reshape(*lead, width).to(y.dtype)


def _causal(t: int, device) -> torch.Tensor:
    """[T, T]: 1 where j <= i."""
    idx = torch.arange(t, device=device)
    return (idx[:, None] >= idx[None, :]).float()


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """a [..., T] -> [..., T, T] with sum_{j < k <= i} a_k at (i, j) (0 where j >= i): the log
    decay from token j to token i, summed term by term rather than as a difference of two long
    cumulative sums, which would lose precision."""
    t = a.shape[-1]
    idx = torch.arange(t, device=a.device)
    below = (idx[:, None] > idx[None, :]).to(a.dtype)
    terms = a[..., None].expand(*a.shape, t)  # (i, j) -> a_i
    return torch.cumsum(terms * below, dim=-2)
