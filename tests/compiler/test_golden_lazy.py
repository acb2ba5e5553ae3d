"""The lazily dequantized quantization-exact reference (omnic/runtime/lazy_weights.py).

The independent reference is an eager copy of the decoder with the same dequantized weights
loaded through `load_state_dict`: both must give bit-identical logits (the same float32 weights,
the same arithmetic), while the lazy copy holds no quantized tensor between calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omnic.model import build_model  # noqa: E402
from omnic.runtime.lazy_weights import LazyWeights, lazy_reference_model  # noqa: E402
from omnic.quant.reference import fake_quantize  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402

HOST = dict(name="host", memory_budget_mb=1024, bandwidth_gbps=10, os="linux", arch="x86_64")


@pytest.fixture(scope="module")
def decoder():
    spec = ResolvedSpec.model_validate(dict(
        omnic=1, name="lazy", device=HOST,
        model=dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                   ffn=dict(kind="swiglu", hidden=128), context_length=32, tie_embeddings=True),
        weights=dict(source="random", seed=5), quantization=dict(weights=dict(scheme="fp32")),
        targets=dict(onnx={})))
    return spec, build_model(spec, Path("."))


def test_lazy_model_matches_an_eager_copy_and_holds_nothing(decoder):
    spec, dec = decoder
    names = [n for n, p in dec.named_parameters() if p.ndim == 2]  # the tied embedding included
    state = dec.state_dict()
    reads: list[str] = []

    def loader(name):
        def load():
            reads.append(name)
            return fake_quantize(state[name].numpy(), "int4", 32, True)
        return load

    weights = LazyWeights({n: loader(n) for n in names})
    lazy = lazy_reference_model(dec, weights)
    eager = build_model(spec, Path("."))
    eager.load_state_dict({k: (torch.from_numpy(weights[k]) if k in weights else v)
                           for k, v in state.items()})
    prompt = np.array([5, 17, 200, 3, 99], dtype=np.int64)
    a, b = TorchRunner(lazy), TorchRunner(eager)
    np.testing.assert_array_equal(a.forward(prompt), b.forward(prompt))
    np.testing.assert_array_equal(a.forward(np.array([7])), b.forward(np.array([7])))
    assert reads.count("layers.1.ffn.down.weight") == 3  # eager copy once + two lazy calls
    # between calls no quantized tensor is held; the fp32 decoder itself is untouched
    held = {n: p.numel() for n, p in lazy.named_parameters() if n in weights}
    assert held and not any(held.values())
    assert all(p.numel() for p in dec.parameters())
    # parameters outside `weights` are shared with the decoder, not copied
    assert lazy.layers[0].attn_norm.weight is dec.layers[0].attn_norm.weight


def test_unknown_name_is_refused(decoder):
    _, dec = decoder
    assert lazy_reference_model(dec, LazyWeights({"no.such.weight": lambda: np.zeros(1)})) is None
