"""Both decoder entry points export with torch.export (non-strict, one graph, dynamic lengths)
and the exported programs compute what the eager module computes."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from omnic.model import build_model


@pytest.fixture(scope="module")
def decoder(make_spec):
    # Sliding window on even layers: both mask kinds appear in one graph.
    spec = make_spec({"sliding_window": {"size": 6, "layers": "even"}, "qk_norm": True})
    return build_model(spec, ".")


def _same(a, b) -> None:
    flat_a, flat_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_static_cache_entry_exports(decoder):
    k, v = decoder.empty_cache()
    n = decoder.config.n_layers
    tokens, pos = torch.tensor([[5, 17, 99, 3]]), torch.arange(4)
    t = Dim.AUTO
    ep = export(decoder, (tokens, pos, k, v),
                dynamic_shapes=({1: t}, {0: t}, [None] * n, [None] * n), strict=False)
    logits, k1, v1 = decoder(tokens, pos, k, v)
    _same(ep.module()(tokens, pos, k, v), (logits, k1, v1))
    # The same graph decodes one token at position 4 against the filled cache.
    step = (torch.tensor([[7]]), torch.tensor([4]), k1, v1)
    _same(ep.module()(*step), decoder(*step))


def test_concat_entry_exports(decoder):
    c = decoder.config
    entry = decoder.concat_entry()
    assert list(entry.state_dict()) == list(decoder.state_dict())  # canonical names, no prefix
    past = [torch.randn(1, c.n_kv_heads, 3, c.head_dim) for _ in range(c.n_layers)]
    args = (torch.tensor([[5, 17, 99, 3]]), torch.ones(1, 7, dtype=torch.long),
            torch.arange(3, 7)[None], past, past)
    a = Dim.AUTO
    shapes = ({1: a}, {1: a}, {1: a}, [{2: a}] * c.n_layers, [{2: a}] * c.n_layers)
    ep = export(entry, args, dynamic_shapes=shapes, strict=False)
    _same(ep.module()(*args), decoder.forward_concat(*args))
    # An empty past (first step of onnxruntime-genai) runs through the same graph.
    empty = [torch.zeros(1, c.n_kv_heads, 0, c.head_dim) for _ in range(c.n_layers)]
    args0 = (args[0], torch.ones(1, 4, dtype=torch.long), torch.arange(4)[None], empty, empty)
    _same(ep.module()(*args0), decoder.forward_concat(*args0))
