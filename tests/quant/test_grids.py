"""Each backend's grid (omnic.quant.grids) against that backend's own quantizer, bit for bit.

The other side of every comparison is the backend's code: coremltools' `compute_qparams_by_dtype`,
onnxruntime's `MatMulNBitsQuantizer`, gguf-py's `quants.quantize` (itself tested bit-exact
against ggml-quants.c by gguf-py), torchao's `quantize_affine` (what ExecuTorch's quantized
tensors hold for given scales). Weights are random normal with one all-zero group, plus the
grids' known differences asserted as differences (so the table in grids.py cannot rot).
"""

from __future__ import annotations

import numpy as np
import pytest

from omnic.quant import grids

def weights(rows: int = 24, cols: int = 96, zero_group: bool = True, seed: int = 7) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    if zero_group:
        w[3, :32] = 0.0
    return w


# -- Core ML ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,group,symmetric,dtype", [
    ("int4", 32, True, np.float16), ("int4", 32, True, np.float32), ("int4", 16, False, np.float16),
    ("int8", None, True, np.float16), ("int8", 32, True, np.float32),
    ("int8", None, False, np.float16),
])
def test_coreml_grid_is_coremltools_quantizer(scheme, group, symmetric, dtype):
    pytest.importorskip("coremltools")
    from coremltools.converters.mil.mil import types
    from coremltools.optimize._utils import compute_qparams_by_dtype

    w = weights(zero_group=False).astype(dtype)  # coremltools divides by a zero scale
    mode = "LINEAR_SYMMETRIC" if symmetric else "LINEAR"
    data, scale, zp = compute_qparams_by_dtype(w, getattr(types, scheme), mode,
                                               [1, group or 0])
    mine = grids.coreml(w, scheme, group, symmetric, dtype=dtype)
    np.testing.assert_array_equal(mine.codes.reshape(w.shape), data)
    np.testing.assert_array_equal(mine.scale, scale.reshape(mine.scale.shape))
    assert mine.scale.dtype == scale.dtype == dtype
    if symmetric:
        assert zp is None and mine.zero_point is None
        bound = 7 if scheme == "int4" else 127
        assert mine.codes.min() >= -bound and mine.codes.max() <= bound  # never -8 / -128
    else:
        np.testing.assert_array_equal(mine.zero_point, zp.reshape(mine.zero_point.shape))


def test_coreml_int4_grid_differs_from_omnic():
    """Core ML's symmetric int4 has 15 levels (max/7); omnic's 16 (extreme on -8)."""
    w = weights(zero_group=False)
    ours = grids.omnic(w, "int4", 32, True)
    theirs = grids.coreml(w, "int4", 32, True, dtype=np.float32)
    assert (ours.codes == -8).any() and not (theirs.codes == -8).any()
    np.testing.assert_allclose(np.abs(theirs.scale), np.abs(ours.scale) * 8 / 7, rtol=1e-6)


# -- onnxruntime -----------------------------------------------------------------------------
def _ort(w: np.ndarray, bits: int, block: int, symmetric: bool):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer,
    )

    k, n = w.shape[1], w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    q = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=symmetric, bits=bits))
    q.process()
    inits = {i.name: numpy_helper.to_array(i) for i in q.model.model.graph.initializer}
    return inits[f"B_Q{bits}"], inits["B_scales"], inits.get("B_zero_points")


@pytest.mark.parametrize("scheme,bits,symmetric", [("int8", 8, True), ("int4", 4, True),
                                                   ("int8", 8, False), ("int4", 4, False)])
def test_onnxruntime_grid_is_matmulnbits_quantizer(scheme, bits, symmetric):
    w = weights()
    data, scales, zp = _ort(w, bits, 32, symmetric)
    mine = grids.onnxruntime(w, scheme, 32, symmetric)
    if bits == 4:
        data = np.stack([data & 15, data >> 4], -1).reshape(*data.shape[:-1], -1)
    stored = data.reshape(mine.codes.shape).astype(np.int16)
    if symmetric:  # MatMulNBits' implicit zero point is 2^(bits-1)
        np.testing.assert_array_equal(stored - (1 << (bits - 1)), mine.codes)
    else:
        np.testing.assert_array_equal(stored, mine.codes)
        if bits == 4:  # packed nibbles, the last high nibble unused for an odd block count
            zp = np.stack([zp & 15, zp >> 4], -1).reshape(zp.shape[0], -1)
        np.testing.assert_array_equal(zp[:, :mine.zero_point.shape[1]], mine.zero_point)
    np.testing.assert_array_equal(scales.reshape(mine.scale.shape), mine.scale)


def test_onnxruntime_int8_uses_the_lowest_level_omnic_does_not():
    w = weights(zero_group=False)
    assert (grids.onnxruntime(w, "int8", 32, True).codes == -128).any()
    assert grids.omnic(w, "int8", 32, True).codes.min() >= -127


# -- GGUF ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,symmetric,qtype", [("int4", True, "Q4_0"), ("int4", False, "Q4_1"),
                                                    ("int8", True, "Q8_0")])
def test_gguf_grid_is_gguf_py(scheme, symmetric, qtype):
    pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType, quants

    w = weights()
    t = GGMLQuantizationType[qtype]
    theirs = quants.dequantize(quants.quantize(w, t), t).reshape(w.shape)
    mine = grids.gguf(w, scheme, 32, symmetric)
    np.testing.assert_array_equal(mine.dequantize(w.shape), theirs)
    assert mine.scale.dtype == np.float16  # ggml blocks keep fp16 scales


def test_gguf_q4_0_rounds_ties_up_not_away():
    """Q4_0 chooses codes as trunc(x/d + 8.5): a tie at -2.5 steps goes to -2, omnic's to -3."""
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 1] = -8.0, -2.5  # d = 1: w/d is exactly -2.5
    assert grids.gguf(w, "int4", 32, True).codes[0, 0, 1] == -2
    assert grids.omnic(w, "int4", 32, True).codes[0, 0, 1] == -3


# -- ExecuTorch / XNNPACK --------------------------------------------------------------------
def test_xnnpack_grid_codes_are_torchao_quantize_affine():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.quantization.quant_primitives import quantize_affine

    w = weights()
    mine = grids.xnnpack(w, "int4", 32, True)
    scale = torch.from_numpy(mine.scale)
    codes = quantize_affine(torch.from_numpy(w), (1, 32), scale, torch.zeros_like(scale,
                            dtype=torch.int8), torch.int8, quant_min=-8, quant_max=7)
    np.testing.assert_array_equal(codes.numpy().reshape(mine.codes.shape), mine.codes)
    # positive, bf16-representable scales (XNNPACK stores bf16 and rejects the rest)
    assert (mine.scale > 0).all()
    bf16 = torch.from_numpy(mine.scale).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16, mine.scale)


def test_xnnpack_grid_is_what_the_executorch_target_stores():
    from omnic.targets.executorch.quant import _xnnpack_int4

    w = weights()
    codes, scale = _xnnpack_int4(w, 32)
    mine = grids.xnnpack(w, "int4", 32, True)
    np.testing.assert_array_equal(codes, mine.codes.reshape(w.shape))
    np.testing.assert_array_equal(scale, mine.scale)


def test_every_grid_dequantizes_within_one_step_of_omnic():
    """Different grids, same scheme: every backend's weights stay within one of its own steps."""
    w = weights(zero_group=False)
    ref = grids.omnic(w, "int4", 32, True).dequantize(w.shape)
    for name, g in (("coreml", grids.coreml(w, "int4", 32, True, dtype=np.float32)),
                    ("gguf", grids.gguf(w, "int4", 32, True)),
                    ("xnnpack", grids.xnnpack(w, "int4", 32, True))):
        step = np.repeat(np.abs(g.scale.astype(np.float32)), 32, axis=-1).reshape(w.shape)
        err = np.abs(g.dequantize(w.shape) - ref)
        assert (err <= step * 1.01 + 1e-6).all(), name
