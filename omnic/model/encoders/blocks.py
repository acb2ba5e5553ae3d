"""The pre-LayerNorm transformer block shared by the vision and audio encoders, and activations.

Attention is an explicit matmul + softmax with static shapes and no mask (every token sees every
token), which every backend omnic lowers to carries as plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """gelu (exact erf), gelu_tanh (tanh approximation) or quick_gelu (x * sigmoid(1.702 x))."""
    if kind == "gelu":
        return F.gelu(x)
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "quick_gelu":
        # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/activations.py
        #      (QuickGELUActivation)
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")


class Attention(nn.Module):
    """Bidirectional multi-head attention with q/k/v/o projections (k without bias for Whisper)."""

    def __init__(self, d: int, n_heads: int, k_bias: bool = True, device=None) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_model {d} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.q = nn.Linear(d, d, device=device)
        self.k = nn.Linear(d, d, bias=k_bias, device=device)
        self.v = nn.Linear(d, d, device=device)
        self.o = nn.Linear(d, d, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.n_heads, self.head_dim)
        q = self.q(x).view(shape).transpose(1, 2)
        k = self.k(x).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        probs = F.softmax(scores, dim=-1)
        return self.o(torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """up -> activation -> down, both with biases."""

    def __init__(self, d: int, hidden: int, act: str, device=None) -> None:
        super().__init__()
        self.up = nn.Linear(d, hidden, device=device)
        self.down = nn.Linear(hidden, d, device=device)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(activation(self.act, self.up(x)))


class Block(nn.Module):
    """x + attn(attn_norm(x)), then x + ffn(ffn_norm(x)) (CLIP, SigLIP and Whisper encoders)."""

    def __init__(self, d: int, n_heads: int, hidden: int, act: str, eps: float,
                 k_bias: bool = True, device=None) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d, eps=eps, device=device)
        self.attn = Attention(d, n_heads, k_bias, device)
        self.ffn_norm = nn.LayerNorm(d, eps=eps, device=device)
        self.ffn = MLP(d, hidden, act, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Projector(nn.Module):
    """Tokens [1, N, d_in] -> decoder embeddings [1, N, d_out]: `linear`, or `mlp` (Linear, GELU,
    Linear, as LLaVA-1.5's mlp2x_gelu) whose inner width is d_out."""

    # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/llava/modeling_llava.py
    #      (LlavaMultiModalProjector)

    def __init__(self, kind: str, d_in: int, d_out: int, device=None) -> None:
        super().__init__()
        if kind == "linear":
            self.linear = nn.Linear(d_in, d_out, device=device)
        elif kind == "mlp":
            self.fc1 = nn.Linear(d_in, d_out, device=device)
            self.fc2 = nn.Linear(d_out, d_out, device=device)
        else:
            raise ValueError(f"unknown projector {kind!r}; expected linear or mlp")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.linear(x)
        return self.fc2(F.gelu(self.fc1(x)))
