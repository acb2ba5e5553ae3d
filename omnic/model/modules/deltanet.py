"""A Gated DeltaNet linear-attention layer (Qwen3.5): a token mixer with a fixed-size state.

qkv makes q, k (key_heads of key_dim) and v (value_heads of value_dim); they go through a causal
depthwise convolution (no bias) and SiLU. q and k are L2-normalised, q is scaled by
key_dim^-1/2, and each key head serves value_heads / key_heads consecutive value heads. Per value
head, with beta = sigmoid(b x) and the log decay g = -exp(A_log) softplus(a x + dt_bias), the
state S [key_dim, value_dim] follows the gated delta rule

    S_t = exp(g_t) S_{t-1} + k_t ((v_t - exp(g_t) S_{t-1}^T k_t) beta_t)^T      o_t = S_t^T q_t

o is normalised per head by an RMSNorm gated with silu(z x) and projected by out_proj. The state
is the convolution's last kernel - 1 inputs [B, channels, kernel - 1] and S
[B, value_heads, key_dim, value_dim].

A call runs its T tokens in the parallel (WY / UT-transform) form as one chunk: with c the
cumulative log decay, D_ij = exp(c_i - c_j) for j <= i, A the strictly lower part of
(beta k) k^T * D, the values u = (I + A)^-1 (beta v) and w = (I + A)^-1 (beta k exp(c)), and
v' = u - w S_0: o = (q exp(c)) S_0 + tril(q k^T * D) v', S_T = exp(c_T) S_0 + (k exp(c_T - c))^T v'.
(I + A)^-1 comes by block doubling over ceil(log2(T)) levels (each merges neighbouring blocks
of 2^m tokens, and every iterate is part of the exact inverse, so it stays bounded): a fixed count
of matrix products (from the context length when T is symbolic, as under torch.export), exact
for any T up to it. For one token it is the recurrence itself. Eager calls longer than
CHUNK tokens run in slices of CHUNK, as transformers' chunked form does (its chunk is 64).
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3_5/modeling_qwen3_5.py
(Qwen3_5GatedDeltaNet, torch_chunk_gated_delta_rule, torch_recurrent_gated_delta_rule)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 64  # the longest slice an eager call runs at once
_L2_EPS = 1e-6  # transformers' l2norm (the FLA kernels' value)


class GatedDeltaNet(nn.Module):
    """qkv [2 * key_width + value_width, d], z [value_width, d], b and a [value_heads, d], the
    depthwise convolution [channels, 1, kernel] (no bias), A_log and dt_bias [value_heads], the
    gated norm [value_dim] and out_proj [d, value_width]; no projection biases."""

    def __init__(self, d_model: int, key_heads: int, value_heads: int, key_dim: int,
                 value_dim: int, kernel: int, eps: float, max_tokens: int, device=None) -> None:
        super().__init__()
        self.key_heads, self.value_heads = key_heads, value_heads
        self.key_dim, self.value_dim, self.kernel_size, self.eps = key_dim, value_dim, kernel, eps
        self.key_width, self.value_width = key_heads * key_dim, value_heads * value_dim
        self.channels = 2 * self.key_width + self.value_width
        # levels of the triangular inverse when the token count is only known at run time
        self.max_levels = max(1, math.ceil(math.log2(max(2, max_tokens))))
        self.qkv = nn.Linear(d_model, self.channels, bias=False, device=device)
        self.z = nn.Linear(d_model, self.value_width, bias=False, device=device)
        self.b = nn.Linear(d_model, value_heads, bias=False, device=device)
        self.a = nn.Linear(d_model, value_heads, bias=False, device=device)
        self.conv = nn.Conv1d(self.channels, self.channels, kernel, groups=self.channels,
                              bias=False, device=device)
        self.dt_bias = nn.Parameter(torch.ones(value_heads, device=device))
        self.A_log = nn.Parameter(torch.zeros(value_heads, device=device))
        self.norm = _GatedNorm(value_dim, eps, device)
        self.out_proj = nn.Linear(self.value_width, d_model, bias=False, device=device)

    def empty_state(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The states before the first token: zeros (the convolution's causal padding, S_0)."""
        return (torch.zeros(batch, self.channels, self.kernel_size - 1, dtype=dtype),
                torch.zeros(batch, self.value_heads, self.key_dim, self.value_dim, dtype=dtype))

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, d] and the two states -> (y [B, T, d], the next conv state, the next S)."""
        t = x.shape[1]
        if isinstance(t, int) and t > CHUNK:  # eager: slices of CHUNK tokens
            outs = []
            for start in range(0, t, CHUNK):
                y, conv_state, state = self._call(x[:, start:start + CHUNK], conv_state, state)
                outs.append(y)
            return torch.cat(outs, dim=1), conv_state, state
        return self._call(x, conv_state, state)

    def _call(self, x: torch.Tensor, conv_state: torch.Tensor, state: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, t, _ = x.shape
        seq = torch.cat((conv_state.to(x.dtype), self.qkv(x).transpose(1, 2)), dim=2)
        qkv = F.silu(F.conv1d(seq, self.conv.weight, None, groups=self.channels))
        q, k, v = qkv.transpose(1, 2).split([self.key_width, self.key_width, self.value_width],
                                            dim=-1)
        q = self._per_value_head(l2norm(self._heads(q, self.key_heads))) * self.key_dim ** -0.5
        k = self._per_value_head(l2norm(self._heads(k, self.key_heads)))
        v = self._heads(v, self.value_heads)  # [B, H, T, dv]
        beta = torch.sigmoid(self.b(x).float()).transpose(1, 2)  # [B, H, T]
        g = -torch.exp(self.A_log.float()) * F.softplus(self.a(x).float() + self.dt_bias.float())
        o, s = self._rule(q, k, v, beta, g.transpose(1, 2), state.float())
        o = self.norm(o.transpose(1, 2), self.z(x).view(bsz, t, self.value_heads,
                                                        self.value_dim))
        y = self.out_proj(o.reshape(bsz, t, self.value_width).to(x.dtype))
        return y, seq[:, :, -(self.kernel_size - 1):].to(conv_state.dtype), s.to(state.dtype)

    def _rule(self, q, k, v, beta, g, s0):
        """The gated delta rule over one chunk: q, k [B, H, T, dk], v [B, H, T, dv], beta and
        g [B, H, T], s0 [B, H, dk, dv] -> (o [B, H, T, dv], S_T). The products run as bmm over
        [B * H, T, *]: torch.export decomposes a 4-D matmul into expand + view around a bmm,
        views whose sizes hold the symbolic T, which XNNPACK does not take (each product would
        split the ExecuTorch delegate)."""
        bsz, heads, t, _ = q.shape
        q, k, v = (x.reshape(bsz * heads, -1, x.shape[-1]) for x in (q, k, v))
        beta, g = beta.reshape(bsz * heads, -1), g.reshape(bsz * heads, -1)
        s0 = s0.reshape(bsz * heads, self.key_dim, self.value_dim)
        c = torch.cumsum(g, dim=-1)  # [B * H, T]
        below = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp((c[..., :, None] - c[..., None, :]).masked_fill(~below, -math.inf))
        kb = k * beta[..., None]
        kt = k.transpose(1, 2)
        a = torch.bmm(kb, kt) * decay * below.tril(-1).to(q.dtype)  # strictly lower
        levels = (t - 1).bit_length() if isinstance(t, int) else self.max_levels
        r = torch.bmm(_unit_lower_inverse(a, levels), torch.cat(
            (v * beta[..., None], kb * torch.exp(c)[..., None]), dim=-1))
        u, w = r.split([self.value_dim, self.key_dim], dim=-1)
        v_new = u - torch.bmm(w, s0)
        o = torch.bmm(q * torch.exp(c)[..., None], s0) + torch.bmm(torch.bmm(q, kt) * decay, v_new)
        last = c[..., -1:]  # [B * H, 1]
        s = s0 * torch.exp(last)[..., None] + torch.bmm(
            (k * torch.exp(last - c)[..., None]).transpose(1, 2), v_new)
        return (o.reshape(bsz, heads, -1, self.value_dim),
                s.reshape(bsz, heads, self.key_dim, self.value_dim))

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """[B, T, heads * dim] -> float32 [B, heads, T, dim]."""
        bsz, t, width = x.shape
        return x.reshape(bsz, t, heads, width // heads).transpose(1, 2).float()

    def _per_value_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, key_heads, T, dk] -> [B, value_heads, T, dk]: key head h serves the value heads
        h * r ... h * r + r - 1 (transformers' repeat_interleave)."""
        r = self.value_heads // self.key_heads
        if r == 1:
            return x
        bsz, heads, t, dim = x.shape
        return x[:, :, None].expand(bsz, heads, r, t, dim).reshape(bsz, heads * r, t, dim)


def _unit_lower_inverse(a: torch.Tensor, levels: int) -> torch.Tensor:
    """(I + a)^-1 for a strictly lower triangular a [N, T, T] with T <= 2^levels, by block
    doubling: x holds the exact inverse of the diagonal blocks of 2^m tokens, and merging each
    pair of neighbouring blocks is x <- x - x e x, with e the part of a between the two. Every
    iterate is part of the exact inverse, so it stays as bounded as the inverse itself (a
    Neumann series of a would grow with T, and cancel in float32)."""
    t = a.shape[-1]
    idx = torch.arange(t, device=a.device)
    x = torch.eye(t, dtype=a.dtype, device=a.device).expand_as(a)
    for m in range(levels):
        small, big = idx // (1 << m), idx // (2 << m)
        between = (big[:, None] == big[None, :]) & (small[:, None] != small[None, :])
        x = x - torch.bmm(torch.bmm(x, a * between.to(a.dtype)), x)
    return x


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / |x| along the last axis, as transformers' l2norm: x * rsqrt(sum x^2 + 1e-6)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + _L2_EPS)


class _GatedNorm(nn.Module):
    """RMSNorm over each head's value_dim, then * silu(z) (transformers' Qwen3_5RMSNormGated:
    the weight applies as is, no unit offset)."""

    def __init__(self, width: int, eps: float, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, device=device))
        self.eps = eps

    def forward(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, dv] (float32), z [B, T, H, dv]."""
        o = o.float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.float() * o * F.silu(z.float())
