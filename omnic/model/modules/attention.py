"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), computed explicitly.

Scores are an explicit matmul rather than `scaled_dot_product_attention` so that the Gemma 2
soft-cap can sit between the scale and the mask, exactly where transformers' eager path has it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnic.model.modules.norm import RMSNorm
from omnic.model.modules.rope import apply_rope


class Attention(nn.Module):
    """q/k/v/o projections, optional per-head q/k norms, RoPE, masked softmax attention, and
    Qwen3.5's optional output gate (the output times sigmoid(gate x) before o)."""

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *, qkv_bias: bool,
        qk_norm: bool, norm_eps: float, unit_offset: bool, scale: float,
        softcap: float | None, qk_norm_full: bool = False, output_gate: bool = False,
        device=None,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale, self.softcap = scale, softcap
        self.q = nn.Linear(d_model, n_heads * head_dim, bias=qkv_bias, device=device)
        self.k = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias, device=device)
        self.v = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias, device=device)
        self.o = nn.Linear(n_heads * head_dim, d_model, bias=False, device=device)
        self.gate = (nn.Linear(d_model, n_heads * head_dim, bias=False, device=device)
                     if output_gate else None)
        self.qk_norm_full = qk_norm_full
        if qk_norm:  # RMSNorm whatever the model's norm kind (Qwen3, Gemma 3, OLMo 2 all do)
            # per head (Qwen3, Gemma 3), or over all heads at once before the split (OLMo 2)
            q_width, k_width = ((n_heads * head_dim, n_kv_heads * head_dim) if qk_norm_full
                                else (head_dim, head_dim))
            self.q_norm = RMSNorm(q_width, norm_eps, unit_offset, device)
            self.k_norm = RMSNorm(k_width, norm_eps, unit_offset, device)
        else:
            self.q_norm = self.k_norm = None

    def project(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
        heads_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B,H,T,hd], k and v [B,KV,T,hd] with RoPE applied; cos/sin broadcast to [B,1,T,d]
        (None: no position embedding, a NoPE layer). With `heads_last` the heads stay after the
        tokens (q [B,T,H,hd], k and v [B,T,KV,hd], ExecuTorch's custom SDPA layout), the token
        axis is reshaped as -1, and RoPE is the caller's (cos and sin must be None; see
        omnic/targets/executorch/llm_graph.py)."""
        b, t, _ = x.shape
        if heads_last:
            assert cos is None and sin is None, "heads_last leaves RoPE to the caller"
            t = -1
        q, k = self.q(x), self.k(x)
        if self.q_norm is not None and self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        v = self.v(x).view(b, t, self.n_kv_heads, self.head_dim)
        if not heads_last:
            v = v.transpose(1, 2)
        if self.q_norm is not None and not self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)
        if heads_last:
            return q, k, v
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of q [B,H,T,hd] over k, v [B,KV,S,hd]; mask bool broadcastable to [B,H,T,S];
        x is the layer's (normed) input, which the output gate reads."""
        b, _, t, _ = q.shape
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:  # transformers' repeat_kv: query head h reads kv head h // rep
            s = k.shape[2]
            k = k[:, :, None].expand(b, self.n_kv_heads, rep, s, self.head_dim).reshape(
                b, self.n_heads, s, self.head_dim)
            v = v[:, :, None].expand(b, self.n_kv_heads, rep, s, self.head_dim).reshape(
                b, self.n_heads, s, self.head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        # The lowest finite value, not -inf, as transformers does: a row with no visible key (a
        # left-padding query) then softmaxes to finite numbers instead of NaN, which would leak
        # into every later position through that row's keys and values.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.output(out, x)

    def output(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o of the heads' output h [B, T, heads * head_dim], gated first by sigmoid(gate x)
        when the layer has an output gate (x: the layer's normed input)."""
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(x))
        return self.o(h)
