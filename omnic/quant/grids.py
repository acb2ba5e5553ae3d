"""Each backend's own integer grid for omnic's schemes: one numpy function per backend quantizer.

omnic's reference (`omnic.quant.reference`) defines what a scheme means. The backends' own
quantizers agree with it on the idea (int4 blocks of 32 with a scale each) but not always on the
levels, the scale formula, the rounding or the scale's storage dtype. Each variant below is the
backend's quantizer re-implemented in numpy and tested bit-exact against that quantizer
(tests/quant/test_grids.py). Targets store what the last field of their backend below says
("the target stores"); `omnic plan --explain-quant` prints the grid of every form it shows.

omnic
    int4 symmetric      -8..7, s = m / -8 (m: the extreme)
    int8 symmetric      -127..127, s = max/127
    asymmetric          0..15 / 0..255 + zp, range holds 0
    scale dtype         fp32
    rounding            half away, w / s
    the target stores   (the reference)
onnxruntime
    int4 symmetric      = omnic's levels and scale
    int8 symmetric      -128..127, s = m / -128
    asymmetric          = omnic's range, zp roundf(-lo/s)
    scale dtype         fp32
    rounding            half away of w * (1/s)
    the target stores   ONNX: omnic's codes (int4: equal to ORT's in every test; int8: ±127)
gguf
    int4 symmetric      Q4_0: -8..7, s = m / -8, codes trunc(w * (1/s) + 8.5)
    int8 symmetric      Q8_0: -127..127, roundf(w * (1/s)), blocks of 32
    asymmetric          Q4_1: 0..15, s = (max-min)/15, + min (not a zero point)
    scale dtype         fp16 (codes chosen with the fp32 s)
    rounding            ties up / half away
    the target stores   GGUF: gguf-py's (= ggml-quants.c)
coreml
    int4 symmetric      -7..7, s = max|w| / 7
    int8 symmetric      -127..127, s = max/127
    asymmetric          -8..7 / -128..127 + zp, range holds 0
    scale dtype         the weight's (fp16 at fp16 compute)
    rounding            half to even, in the weight dtype
    the target stores   Core ML: coremltools' own
xnnpack
    int4 symmetric      -8..7, s = m / -8 when m < 0, m / 7 when m > 0, s rounded to bf16 first
    int8 symmetric      = omnic (fp32 scales)
    asymmetric          - (no zero points)
    scale dtype         bf16 (int4), fp32 (int8)
    rounding            half away
    the target stores   ExecuTorch linears: this; embeddings: omnic's

TVM stores omnic's codes with the scales rounded to fp16 afterwards (dequantized exactly from the
stored arrays). m is the group's element of largest magnitude, with its sign.

  ref: onnxruntime/python/tools/quantization/matmul_nbits_quantizer.py (quantize_matmul_8bits)
  ref: https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/quants.py (Q4_0, Q4_1, Q8_0)
  ref: coremltools/optimize/_utils.py (get_quant_range, quantize_weight_by_dtype)
  ref: executorch/backends/xnnpack/operators/node_visitor.py (bf16 per_channel_group scales)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnic.quant.reference import bf16_bits, quantize as reference_quantize, round_half_away

BACKENDS = ("omnic", "onnxruntime", "gguf", "coreml", "xnnpack")


@dataclass(frozen=True)
class Grid:
    """Codes and parameters as one backend's quantizer produces them ([out, groups, group]).

    Attributes:
        codes: integer codes as the backend defines them (signed, or unsigned with `zero_point`).
        scale: [out, groups] scale values, already rounded to the backend's stored dtype.
        zero_point: [out, groups] or None.
        offset: [out, groups] additive minimum (GGUF Q4_1) or None.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None = None
    offset: np.ndarray | None = None

    def dequantize(self, shape: tuple[int, ...]) -> np.ndarray:
        """(codes - zero_point) * scale + offset, float32, as the runtime computes it."""
        q = self.codes.astype(np.float32)
        if self.zero_point is not None:
            q = q - self.zero_point.astype(np.float32)[..., None]
        w = q * self.scale.astype(np.float32)[..., None]
        if self.offset is not None:
            w = w + self.offset.astype(np.float32)[..., None]
        return w.reshape(shape).astype(np.float32)


def _groups(w: np.ndarray, group_size: int | None) -> np.ndarray:
    out_f, in_f = w.shape
    g = in_f if group_size is None else int(group_size)
    if in_f % g:
        raise ValueError(f"group_size {group_size} does not divide the input width {in_f}")
    return w.reshape(out_f, in_f // g, g)


def omnic(w: np.ndarray, scheme: str, group_size: int | None, symmetric: bool) -> Grid:
    """omnic's reference (`omnic.quant.reference.quantize`)."""
    q = reference_quantize(w, scheme, group_size, symmetric)
    return Grid(q.codes, q.scale, q.zero_point)


def onnxruntime(w: np.ndarray, scheme: str, group_size: int | None, symmetric: bool) -> Grid:
    """onnxruntime's MatMulNBitsQuantizer (MLAS blockwise quantization, 4 and 8 bits).

    Symmetric: s = m / -2^(bits-1) (the signed extreme on the lowest level, so int8 uses
    -128..127 where omnic keeps -127..127). Asymmetric: omnic's range and scale, the zero point
    roundf(-lo / s) clamped. Codes are roundf(w * (1/s)) (+ zero point): a multiplication by the
    float32 reciprocal, where omnic divides (the two can differ where w / s lands within
    float32 rounding of a half step).
      ref: onnxruntime/core/mlas/lib/q4_dq.cpp (BlockwiseQuantizer: range2scale, range2scalezp)
    """
    bits = 4 if scheme == "int4" else 8
    x = _groups(np.asarray(w, np.float32), group_size)
    levels = (1 << bits) - 1
    if symmetric:
        idx = np.abs(x).argmax(axis=-1)[..., None]
        scale = (np.take_along_axis(x, idx, axis=-1)[..., 0]
                 / np.float32(-(1 << (bits - 1)))).astype(np.float32)
        zero = None
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        vmin = np.minimum(x.min(axis=-1), np.float32(0.0))
        vmax = np.maximum(x.max(axis=-1), np.float32(0.0))
        scale = ((vmax - vmin) / np.float32(levels)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp_fp = np.where(scale != 0, np.float32(0.0) - vmin / scale, vmin)
        zero = np.clip(round_half_away(np.clip(zp_fp, 0, levels)), 0, levels).astype(np.uint8)
        lo, hi = 0, levels
    with np.errstate(divide="ignore"):
        inv = np.where(scale == 0, np.float32(0.0), np.float32(1.0) / scale).astype(np.float32)
    q = round_half_away(x * inv[..., None])
    if zero is not None:
        q = q + zero[..., None]
    codes = np.clip(q, lo, hi).astype(np.int8 if symmetric else np.uint8)
    return Grid(codes, scale, zero)


def gguf(w: np.ndarray, scheme: str, group_size: int | None, symmetric: bool) -> Grid:
    """gguf-py's Q4_0 (int4 symmetric), Q4_1 (int4 asymmetric) and Q8_0 (int8 symmetric), blocks
    of 32 whatever group was asked (GGUF stores int8 per-channel as Q8_0)."""
    x = _groups(np.asarray(w, np.float32), 32)
    if scheme == "int4" and symmetric:
        idx = np.abs(x).argmax(axis=-1)[..., None]
        d = np.take_along_axis(x, idx, axis=-1) / -8
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
        u = np.trunc((x * inv) + np.float32(8.5), dtype=np.float32).astype(np.uint8).clip(0, 15)
        codes = u.astype(np.int8) - np.int8(8)
        return Grid(codes, d[..., 0].astype(np.float16))
    if scheme == "int4":
        hi, lo = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
        d = (hi - lo) / 15
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
        u = np.trunc((x - lo) * inv + np.float32(0.5),
                     dtype=np.float32).astype(np.uint8).clip(0, 15)
        return Grid(u, d[..., 0].astype(np.float16), None, lo[..., 0].astype(np.float16))
    if scheme == "int8" and symmetric:
        d = np.abs(x).max(axis=-1, keepdims=True) / 127
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d)
        codes = round_half_away(x * inv).astype(np.int8)
        return Grid(codes, d[..., 0].astype(np.float16))
    raise ValueError(f"GGUF has no block type for {scheme} symmetric={symmetric}")


def coreml(w: np.ndarray, scheme: str, group_size: int | None, symmetric: bool,
           dtype: type = np.float16) -> Grid:
    """coremltools' linear quantizer (linear_symmetric / linear, signed int4/int8), computed in
    the weight's dtype as the converter holds it (fp16 at fp16 compute precision)."""
    bits = 4 if scheme == "int4" else 8
    x = _groups(np.asarray(w).astype(dtype), group_size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    vmin, vmax = np.amin(x, axis=-1, keepdims=True), np.amax(x, axis=-1, keepdims=True)
    zero = None
    if symmetric:
        qmin += 1
        m = np.maximum(np.abs(vmin), np.abs(vmax))
        vmin, vmax = -m, m
    else:
        vmin, vmax = np.minimum(0.0, vmin), np.maximum(0.0, vmax)
    scale = (vmax - vmin) / (qmax - qmin)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.round(x / scale)
        if not symmetric:
            zero = np.clip(np.round((qmin * vmax - qmax * vmin) / (vmax - vmin)), qmin, qmax)
            q += zero
    codes = np.clip(q, qmin, qmax).astype(np.int8)
    scale = scale.astype(dtype)[..., 0]
    return Grid(codes, scale, None if zero is None else zero[..., 0].astype(np.int8))


def xnnpack(w: np.ndarray, scheme: str, group_size: int | None, symmetric: bool) -> Grid:
    """ExecuTorch XNNPACK linears. int4: positive bf16 block scales (XNNPACK rejects others):
    groups whose extreme m is negative keep omnic's s = m / -8, the others use s = m / 7 (m still
    exact, on +7); s is rounded to bf16 and the codes are chosen for the rounded s; all-zero
    groups get s = 1. int8 (per channel): omnic's codes, fp32 scales, zero rows s = 1."""
    if not symmetric:
        raise ValueError("XNNPACK's quantized linears take symmetric weights only")
    x = _groups(np.asarray(w, np.float32), group_size)
    if scheme == "int8":
        q = reference_quantize(w, scheme, group_size, True)
        scale = np.where(q.scale == 0, np.float32(1.0), q.scale).astype(np.float32)
        return Grid(q.codes, scale)
    idx = np.abs(x).argmax(axis=-1)[..., None]
    m = np.take_along_axis(x, idx, axis=-1)[..., 0]
    scale = np.where(m < 0, m / -8.0, m / 7.0).astype(np.float32)
    rounded = (bf16_bits(scale).astype(np.uint32) << 16).view(np.float32).reshape(scale.shape)
    scale = np.where(scale > 0, rounded, np.float32(1.0)).astype(np.float32)
    codes = np.clip(round_half_away(x / scale[..., None]), -8, 7).astype(np.int8)
    return Grid(codes, scale)


def quantize(backend: str, w: np.ndarray, scheme: str, group_size: int | None = None,
             symmetric: bool = True, **kwargs) -> Grid:
    """Quantize `w` ([out, in] float) as `backend`'s own quantizer does (see the module table)."""
    fn = {"omnic": omnic, "onnxruntime": onnxruntime, "gguf": gguf, "coreml": coreml,
          "xnnpack": xnnpack}[backend]
    return fn(w, scheme, group_size, symmetric, **kwargs)
