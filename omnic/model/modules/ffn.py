"""Feed-forward blocks: gated (SwiGLU, GeGLU), plain GELU, and a dense mixture of experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """swiglu: down(silu(gate(x)) * up(x)); geglu: the same with tanh-GELU (Gemma's
    `gelu_pytorch_tanh`); gelu: down(gelu(up(x))) with tanh-GELU as GPT-2 and Phi-2 (`gelu_new`)."""

    def __init__(self, d_model: int, hidden: int, kind: str, device=None) -> None:
        super().__init__()
        if kind not in ("swiglu", "geglu", "gelu"):
            raise ValueError(f"unknown ffn kind {kind!r}")
        self.kind = kind
        if kind != "gelu":
            self.gate = nn.Linear(d_model, hidden, bias=False, device=device)
        self.up = nn.Linear(d_model, hidden, bias=False, device=device)
        self.down = nn.Linear(hidden, d_model, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.kind == "geglu":
            return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class MoE(nn.Module):
    """Top-k routed experts plus optional always-on shared experts.

    Routing follows Mixtral: softmax over all experts in float32, keep the top k, optionally
    renormalise them to sum to one. Every expert is evaluated on every token and weighted by the
    (mostly zero) routing matrix: no data-dependent control flow, so the graph exports as is.
    That costs `experts / top_k` times the FFN compute, which is fine for the tiny models omnic
    verifies; a sparse gather/scatter kernel is a target-side optimisation.
    The shared experts (one block of `shared_experts * shared_hidden` width) are added
    unweighted, DeepSeek style; Qwen-MoE's extra sigmoid gate is not modelled.
    ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/mixtral/modeling_mixtral.py
    """

    def __init__(
        self, d_model: int, hidden: int, kind: str, experts: int, top_k: int, normalize_top_k: bool,
        shared_hidden: int | None, device=None,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.normalize_top_k = normalize_top_k
        self.router = nn.Linear(d_model, experts, bias=False, device=device)
        self.experts = nn.ModuleList(FeedForward(d_model, hidden, kind, device)
                                     for _ in range(experts))
        self.shared = FeedForward(d_model, shared_hidden, kind, device) if shared_hidden else None

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """Dense routing weights [..., experts]: zero except at each token's top k experts."""
        probs = F.softmax(self.router(x), dim=-1, dtype=torch.float32)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize_top_k:
            top = top / top.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, index, top).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.routing(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * weights[..., e : e + 1]
        if self.shared is not None:
            out = out + self.shared(x)
        return out
