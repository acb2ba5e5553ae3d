"""omnic.quant.reference against hand-computed values, torch's casts and gguf-py's quantizers."""

from __future__ import annotations

import numpy as np
import pytest

from omnic.quant.reference import dequantize, fake_quantize, quantize, reference_weights

RNG = np.random.default_rng(1234)
W = RNG.standard_normal((8, 64)).astype(np.float32)


def test_int8_symmetric_by_hand():
    # Powers of two keep the arithmetic exact, so ties really are ties.
    w = np.array([[63.5, -1.25, 0.0, 0.75]], dtype=np.float32)
    q = quantize(w, "int8")
    assert float(q.scale[0, 0]) == 0.5  # one scale per row: max|w| / 127
    assert q.codes.reshape(-1).tolist() == [127, -3, 0, 2]  # -2.5 -> -3, 1.5 -> 2: away from 0
    np.testing.assert_array_equal(dequantize(q), [[63.5, -1.5, 0.0, 1.0]])


def test_int4_symmetric_by_hand():
    w = np.array([[-4.0, 3.5, 0.25, 0.75]], dtype=np.float32)
    q = quantize(w, "int4", group_size=4)
    assert float(q.scale[0, 0]) == 0.5  # the signed extreme / -8: it maps exactly to -8
    assert q.codes.reshape(-1).tolist() == [-8, 7, 1, 2]  # 0.5 -> 1, 1.5 -> 2
    w2 = np.array([[4.0, -2.0, 0.0, 3.9]], dtype=np.float32)  # positive extreme: scale < 0
    assert float(quantize(w2, "int4", 4).scale[0, 0]) == -0.5
    np.testing.assert_array_equal(fake_quantize(w2, "int4", 4), [[4.0, -2.0, 0.0, 4.0]])


def test_int4_asymmetric_by_hand():
    w = np.array([[0.0, 7.5, 1.5, 2.25]], dtype=np.float32)
    q = quantize(w, "int4", group_size=4, symmetric=False)
    # range [min(w, 0), max(w, 0)] = [0, 7.5]: scale 0.5, zero point 0
    assert float(q.scale[0, 0]) == 0.5 and q.zero_point.tolist() == [[0]]
    assert q.codes.reshape(-1).tolist() == [0, 15, 3, 5]  # 4.5 -> 5
    w = np.array([[-1.5, 6.0, 0.0, 3.0]], dtype=np.float32)
    q = quantize(w, "int4", group_size=4, symmetric=False)
    assert q.zero_point.tolist() == [[3]] and q.codes.reshape(-1).tolist() == [0, 15, 3, 9]
    np.testing.assert_array_equal(dequantize(q), w)  # zero (and this grid) exactly


@pytest.mark.parametrize("scheme,group,symmetric,levels", [
    ("int8", None, True, 254), ("int8", 32, True, 254), ("int8", 16, False, 255),
    ("int4", 32, True, 15), ("int4", 16, False, 15), ("int4", 64, True, 15),
])
def test_error_is_within_half_a_step(scheme, group, symmetric, levels):
    q = quantize(W, scheme, group, symmetric)
    err = np.abs(dequantize(q) - W).reshape(q.codes.shape)
    step = np.abs(q.scale)[..., None]
    # Half a step, except symmetric int4 values on the short side of the range (> 7 steps),
    # which clip to 7: at most one step.
    limit = step * (1.0 if (scheme, symmetric) == ("int4", True) else 0.5) + 1e-7
    assert (err <= limit).all()
    assert len(np.unique(q.codes)) <= levels + 1


def test_fp16_and_bf16_match_torch_casts():
    import torch

    w = np.concatenate([W.reshape(-1), [1e-8, 65504.0, 70000.0, -3.0e38, 1.0 + 2**-8]])
    w = w.astype(np.float32)
    np.testing.assert_array_equal(fake_quantize(w, "fp16"),
                                  torch.from_numpy(w).half().float().numpy())
    np.testing.assert_array_equal(fake_quantize(w, "bf16"),
                                  torch.from_numpy(w).bfloat16().float().numpy())
    assert fake_quantize(w, "fp32").tobytes() == w.tobytes()


def test_int4_symmetric_within_fp16_scale_rounding_of_gguf_q4_0():
    """llama.cpp's Q4_0 is the same formula with an fp16 scale: within one step, and the codes
    agree except where the fp16 scale moves a value across a rounding boundary."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize as gdq
    from gguf.quants import quantize as gq

    ref = gdq(gq(W, gguf.GGMLQuantizationType.Q4_0), gguf.GGMLQuantizationType.Q4_0)
    mine = quantize(W, "int4", 32)
    step = np.abs(mine.scale).max()
    assert np.abs(dequantize(mine) - ref).max() < step
    codes_ref = np.rint(ref.reshape(mine.codes.shape) / mine.scale[..., None])
    assert (codes_ref == mine.codes).mean() > 0.97


def test_int8_symmetric_group32_within_a_step_of_gguf_q8_0():
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize as gdq
    from gguf.quants import quantize as gq

    ref = gdq(gq(W, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    mine = quantize(W, "int8", 32)
    assert np.abs(dequantize(mine) - ref).max() <= np.abs(mine.scale).max()


def test_zero_groups_and_bad_groups():
    z = np.zeros((2, 8), dtype=np.float32)
    for scheme, sym in (("int8", True), ("int4", True), ("int4", False)):
        assert (fake_quantize(z, scheme, 4, sym) == 0).all()
    with pytest.raises(ValueError, match="does not divide"):
        quantize(W, "int4", 48)
    with pytest.raises(ValueError, match="needs a group_size"):
        quantize(W, "int4")


def test_reference_weights_follows_the_plan():
    from omnic.quant.select import TensorScheme

    plan = {"a": TensorScheme("int4", 32, True), "b": TensorScheme("fp32", None, True),
            "c": TensorScheme("int8", None, True)}
    out = reference_weights({"a": W, "b": W, "c": W}, plan)
    assert sorted(out) == ["a", "c"]
    np.testing.assert_array_equal(out["a"], fake_quantize(W, "int4", 32))
    np.testing.assert_array_equal(out["c"], fake_quantize(W, "int8"))
