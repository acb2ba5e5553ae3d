"""Numpy reference quantizers: the one definition of what each omnic weight scheme means.

Every function here is plain numpy (torch-free) and deterministic. A target whose storage format
is exactly one of these schemes may call `fake_quantize` to build its `artifact.reference_weights`;
a target with its own format (GGUF Q4_0 with fp16 scales, torchao's 8da4w, Core ML palettes...)
dequantizes what it actually stored instead. The golden check never assumes either.

Layout: a matrix weight is [out_features, in_features] (torch.nn.Linear); groups run along the
input dimension (the last axis), `group_size` consecutive elements per scale. `group_size=None`
means one group per row (per output channel). Scales are float32.

Rounding is round-half-away-from-zero everywhere (C `roundf`), the convention of llama.cpp's
`quantize_row_q8_0` and onnxruntime's block quantizer; numpy's `np.round` (half to even) differs
only on exact ties.
  ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c

Formulas (w one group, q the stored integer code, w' = dequantize(q)):

| scheme          | codes       | scale s      | q                                 | w'         |
|-----------------|-------------|--------------|-----------------------------------|------------|
| fp16            | float16     | -            | IEEE round-to-nearest-even        | float32(q) |
| bf16            | uint16 bits | -            | upper 16 bits, round-nearest-even | float32(q) |
| int8 symmetric  | [-127,127]  | max|w| / 127 | clip(round(w/s), -127, 127)       | q*s        |
| int8 asymmetric | [0,255]     | (hi-lo)/255  | clip(round(w/s)+z, 0, 255)        | (q-z)*s    |
| int4 symmetric  | [-8,7]      | m / -8       | clip(round(w/s), -8, 7)           | q*s        |
| int4 asymmetric | [0,15]      | (hi-lo)/15   | clip(round(w/s)+z, 0, 15)         | (q-z)*s    |

where m = the w of largest |w|, lo=min(w,0), hi=max(w,0), and z=clip(round(-lo/s),0,255) for
int8 asymmetric, z=clip(round(-lo/s),0,15) for int4 asymmetric.

int4 symmetric uses the signed extreme (`m / -8`, llama.cpp Q4_0's choice) so that all 16 levels
are used: the largest-magnitude element maps exactly to -8. int8 symmetric keeps the level set
symmetric (-127..127, like Q8_0). The asymmetric range always contains 0 so that zero weights stay
exactly zero (onnxruntime's MatMulNBits quantizer does the same). A group of zeros has s = 0 and
dequantizes to zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

FLOAT_SCHEMES = ("fp32", "fp16", "bf16")
INT_SCHEMES = ("int8", "int4")


@dataclass(frozen=True)
class Quantized:
    """A tensor in one scheme's storage: integer codes plus per-group scales (and zero points)."""

    scheme: str
    shape: tuple[int, ...]
    codes: np.ndarray  # float16 (fp16), uint16 (bf16 bits), int8 or uint8 [out, groups, group]
    scale: np.ndarray | None = None  # float32 [out, groups]
    zero_point: np.ndarray | None = None  # uint8 [out, groups] (asymmetric only)
    group_size: int | None = None
    symmetric: bool = True


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (C `roundf`)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _grouped(w: np.ndarray, group_size: int | None) -> tuple[np.ndarray, int]:
    if w.ndim != 2:
        raise ValueError(f"integer schemes quantize matrices [out, in]; got shape {w.shape}")
    out_f, in_f = w.shape
    g = in_f if group_size is None else int(group_size)
    if g <= 0 or in_f % g:
        raise ValueError(f"group_size {group_size} does not divide the input width {in_f}")
    return w.reshape(out_f, in_f // g, g), g


def bf16_bits(w: np.ndarray) -> np.ndarray:
    # Round to nearest even on the 16 dropped mantissa bits, as torch's float -> bfloat16 does;
    # NaN stays a (quiet) NaN.
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def quantize(
    w: np.ndarray, scheme: str, group_size: int | None = None, symmetric: bool = True
) -> Quantized:
    """Quantize a float array to `scheme` (see the module table for the exact formulas).

    Args:
        w: float array; matrices are [out_features, in_features].
        scheme: "fp32", "fp16", "bf16", "int8" or "int4".
        group_size: elements per scale along the last axis; None = one scale per row
            (required for int4).
        symmetric: symmetric codes (no zero point) or asymmetric with a zero point.

    Returns:
        The stored form. `dequantize` turns it back into float32.
    """
    w = np.asarray(w, dtype=np.float32)
    shape = tuple(w.shape)
    if scheme == "fp32":
        return Quantized(scheme, shape, w.copy())
    if scheme == "fp16":
        with np.errstate(over="ignore"):  # beyond 65504 becomes inf, as IEEE casts do
            return Quantized(scheme, shape, w.astype(np.float16))
    if scheme == "bf16":
        return Quantized(scheme, shape, bf16_bits(w))
    if scheme not in INT_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    if scheme == "int4" and group_size is None:
        raise ValueError("int4 needs a group_size")
    x, g = _grouped(w, group_size)
    if symmetric:
        if scheme == "int8":
            qmin, qmax = -127, 127
            scale = np.abs(x).max(axis=-1) / 127.0
        else:
            qmin, qmax = -8, 7
            idx = np.abs(x).argmax(axis=-1)[..., None]
            scale = np.take_along_axis(x, idx, axis=-1)[..., 0] / -8.0
        safe = np.where(scale == 0, 1.0, scale)[..., None]
        codes = np.clip(round_half_away(x / safe), qmin, qmax)
        codes = np.where(scale[..., None] == 0, 0, codes).astype(np.int8)
        return Quantized(scheme, shape, codes, scale.astype(np.float32), None, group_size, True)
    levels = 255 if scheme == "int8" else 15
    lo = np.minimum(x.min(axis=-1), 0.0)
    hi = np.maximum(x.max(axis=-1), 0.0)
    scale = ((hi - lo) / levels).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale)
    zp = np.clip(round_half_away(-lo / safe), 0, levels)
    codes = np.clip(round_half_away(x / safe[..., None]) + zp[..., None], 0, levels)
    codes = np.where(scale[..., None] == 0, zp[..., None], codes).astype(np.uint8)
    return Quantized(scheme, shape, codes, scale, zp.astype(np.uint8), group_size, False)


def dequantize(t: Quantized) -> np.ndarray:
    """The float32 values a stored tensor stands for."""
    if t.scheme == "fp32":
        return t.codes.astype(np.float32)
    if t.scheme == "fp16":
        return t.codes.astype(np.float32)
    if t.scheme == "bf16":
        return (t.codes.astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    q = t.codes.astype(np.float32)
    if t.zero_point is not None:
        q = q - t.zero_point.astype(np.float32)[..., None]
    return (q * t.scale[..., None]).reshape(t.shape).astype(np.float32)


def fake_quantize(
    w: np.ndarray, scheme: str, group_size: int | None = None, symmetric: bool = True
) -> np.ndarray:
    """`dequantize(quantize(w, ...))`: the float32 weights a model in this scheme computes with."""
    return dequantize(quantize(w, scheme, group_size, symmetric))


def storage_bytes(shape: tuple[int, ...], scheme: str, group_size: int | None = None,
                  symmetric: bool = True) -> int:
    """Bytes of codes + float32 scales (+ zero points) of one tensor in this reference layout.

    Packing is the idealised one (two int4 codes per byte, one byte per zero point); backends
    pack scales as fp16 and zero points as nibbles, so their files differ from this by design.
    """
    n = int(np.prod(shape)) if shape else 1
    if scheme in ("fp32",):
        return 4 * n
    if scheme in ("fp16", "bf16"):
        return 2 * n
    groups = n // (shape[-1] if group_size is None else group_size)
    code_bytes = n if scheme == "int8" else (n + 1) // 2
    return code_bytes + 4 * groups + (0 if symmetric else groups)


def reference_weights(
    state_dict: Mapping[str, Any], quant_plan: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Fake-quantize every tensor the plan stores below fp32.

    Args:
        state_dict: canonical name -> tensor (torch or numpy), fp32.
        quant_plan: `program.schemes()`: name -> TensorScheme (scheme,
            group_size, symmetric).

    Returns:
        name -> float32 numpy array for the tensors whose scheme is not fp32; tensors left at
        fp32 are omitted (the reference keeps them unchanged).
    """
    out: dict[str, np.ndarray] = {}
    for name, ts in quant_plan.items():
        if ts.scheme == "fp32" or name not in state_dict:
            continue
        value = state_dict[name]
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[name] = fake_quantize(arr, ts.scheme, ts.group_size, ts.symmetric)
    return out
