"""Blocks without a transformers counterpart among the imported families, checked against
straightforward reference implementations written here: the dense-computed MoE against a
per-token sparse loop, LayerNorm with unit offset, the plain GELU FFN; and the module layout
rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from omnic.model.modules.ffn import FeedForward, MoE
from omnic.model.modules.norm import LayerNorm


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("normalize,shared", [(True, None), (False, 48)])
def test_moe_equals_sparse_routing(normalize, shared):
    moe = MoE(32, 40, "swiglu", experts=5, top_k=2, normalize_top_k=normalize, shared_hidden=shared)
    _randomize(moe, 0)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    ref = torch.zeros_like(x)
    for b in range(2):
        for t in range(7):
            h = x[b, t]
            probs = torch.softmax(h @ moe.router.weight.T, dim=-1)
            top = torch.argsort(probs, descending=True)[:2]
            w = probs[top] / probs[top].sum() if normalize else probs[top]
            for weight, e in zip(w, top.tolist()):
                ex = moe.experts[e]
                ref[b, t] += weight * (ex.down.weight @ (F.silu(ex.gate.weight @ h)
                                                         * (ex.up.weight @ h)))
            if shared:
                s = moe.shared
                ref[b, t] += s.down.weight @ (F.silu(s.gate.weight @ h) * (s.up.weight @ h))
    torch.testing.assert_close(moe(x), ref, rtol=0, atol=1e-5)


def test_gelu_ffn_and_layernorm_offset():
    ffn = FeedForward(16, 24, "gelu")
    _randomize(ffn, 2)
    x = torch.randn(3, 16)
    inner = ffn.up.weight @ x.T
    tanh_gelu = 0.5 * inner * (1 + torch.tanh((2 / torch.pi) ** 0.5
                                              * (inner + 0.044715 * inner**3)))
    torch.testing.assert_close(ffn(x), (ffn.down.weight @ tanh_gelu).T, rtol=0, atol=1e-5)

    norm = LayerNorm(16, 1e-5, unit_offset=True)
    _randomize(norm, 3)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * (1 + norm.weight) + norm.bias
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-5)


def test_modules_never_import_the_spec():
    """STYLE.md: config never reaches into modules; only build/config.py reads the spec."""
    import omnic.model.modules as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("omnic.spec") for n in names), (
                f"{path.name} imports {names}")
