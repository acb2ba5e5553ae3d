"""GGUF writer without llama.cpp: streaming memory, read-back of every block type, layout.

The reference for the stored values is the fp32 model and the quantization error bound of each
ggml block type (half a step of its scale), checked independently of gguf-py's dequantizer.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from omnic.model import build_model  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.formats.gguf_arch import plan_arch, tensor_plan  # noqa: E402
from omnic.targets.gguf.quant import plan_types  # noqa: E402
from omnic.formats.gguf_vocab import vocab_for  # noqa: E402
from omnic.targets.gguf.write import read_back, write_gguf  # noqa: E402

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
MODEL = {"vocab_size": 512, "d_model": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 384}, "context_length": 64,
         "moe": {"experts": 4, "top_k": 2}}


def make_spec(file_type: str) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "w", "device": DEVICE, "model": MODEL,
        "quantization": {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": file_type}}})


@pytest.fixture(scope="module")
def decoder():
    return build_model(make_spec("F32"), Path("."))


def _write(spec, decoder, path):
    plan, _ = plan_arch(spec.model)
    tensors = tensor_plan(spec.model, plan)
    types, problems = plan_types(spec, tensors)
    assert problems == []
    state = decoder.state_dict()
    write_gguf(path, spec, plan, tensors, types.types, types.file_type, vocab_for(spec, Path(".")),
               lambda n: state[n].numpy(), Path("."))
    return plan, tensors, types


def test_writer_streams_one_tensor_at_a_time(decoder, tmp_path) -> None:
    """Python-side peak while writing Q8_0 stays near the largest tensor, far below the model."""
    spec = make_spec("Q8_0")
    state = decoder.state_dict()
    model_bytes = sum(t.numel() * 4 for t in state.values())
    largest = max(t.numel() * 4 for t in state.values())
    largest = max(largest, 4 * 128 * 384 * 4)  # a stacked expert tensor is built whole
    tracemalloc.start()
    _write(spec, decoder, tmp_path / "q8.gguf")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * largest, (peak, largest)
    assert peak < 0.5 * model_bytes, (peak, model_bytes)


# half a quantization step per 32-block (a whole one where _0 types clip their far end at 2^(b-1)-1)
# (Q8_0 d = amax/127; Q5_0 d = amax/16; Q4_0 d = amax/8; Q4_1/Q5_1 d = (max-min)/15 or 31)
BOUNDS = {"F16": None, "BF16": None, "Q8_0": 0.5 / 127, "Q5_0": 1.0 / 16, "Q4_0": 1.0 / 8,
          "Q5_1": 1.0 / 31, "Q4_1": 1.0 / 15}


@pytest.mark.parametrize("file_type", sorted(BOUNDS))
def test_read_back_is_the_model_within_one_step(decoder, tmp_path, file_type: str) -> None:
    spec = make_spec(file_type)
    path = tmp_path / f"{file_type}.gguf"
    plan, tensors, types = _write(spec, decoder, path)
    facts, weights = read_back(path, spec, plan, tensors, with_weights=True)
    assert facts["tensor_types"][file_type] > 0
    assert facts["types"]["blk.0.ffn_gate_inp.weight"] == "F32"  # the router, as llama.cpp
    state = decoder.state_dict()
    assert set(weights) == set(state)
    for name, w in weights.items():
        true = state[name].numpy()
        assert w.shape == true.shape and w.dtype == np.float32
        if true.ndim == 1 or "router" in name:
            np.testing.assert_array_equal(w, true)
        elif BOUNDS[file_type] is None:
            rel = 2.0**-11 if file_type == "F16" else 2.0**-8
            np.testing.assert_allclose(w, true, rtol=rel, atol=1e-7)
        else:
            blocks = true.reshape(-1, 32)
            span = np.abs(blocks).max(-1, keepdims=True) if file_type.endswith("_0") else \
                (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True))
            err = np.abs(w.reshape(-1, 32) - blocks)
            # + the fp16 rounding of the block scale: up to 2^-11 of the scale times the level
            assert (err <= span * BOUNDS[file_type] * 1.15 + 1e-6).all(), name


@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0"])
def test_row_chunked_conversion_is_gguf_py_whole_tensor_call(monkeypatch, type_name):
    """quantize/dequantize work a few rows at a time (no whole-tensor temporaries): the bytes
    and values must be those of gguf-py's one call on the whole tensor."""
    from gguf import GGMLQuantizationType, quants

    from omnic.quant import ggml as gguf_quant

    monkeypatch.setattr(gguf_quant, "CHUNK", 3 * 256)  # 3 rows of 256 per call: 7 calls
    w = np.random.default_rng(1).standard_normal((20, 256)).astype(np.float32)
    qtype = GGMLQuantizationType[type_name]
    got = gguf_quant.quantize(w, type_name)
    want = w.astype(np.float16) if type_name == "F16" else quants.quantize(w, qtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    back = gguf_quant.dequantize(got, qtype)
    assert back.dtype == np.float32 and back.shape == w.shape
    np.testing.assert_array_equal(back, quants.dequantize(want, qtype).astype(np.float32))
    assert 0 < np.abs(back - w).max() < 0.5  # a real round trip, not a copy
