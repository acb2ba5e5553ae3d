"""GPTQ: int4 symmetric group quantization that compensates each column's rounding error.

Round-to-nearest (RTN) quantizes every weight on its own. GPTQ quantizes the input columns of
W [out, in] one at a time and spreads each column's error over the columns not yet quantized, so
as to minimise the layer's output error on calibration activations x [tokens, in]:
trace((W' - W) H (W' - W)^T) with H = sum of x^T x (`output_error`). The update comes from the
upper Cholesky factor U of H^-1: after column i, err = (w_i - q_i) / U[i, i] and
W[:, j] -= err * U[i, j] for j > i, applied lazily in blocks of columns (the reference's
"lazy batch" updates). Rows are independent, so several matrices that read the same input may
be stacked along `out`. No act-order; groups are static, in column order.
  ref: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
       Transformers", https://arxiv.org/abs/2210.17323 (Algorithm 1)
  ref: https://github.com/IST-DASLab/gptq/blob/main/gptq.py (GPTQ.fasterquant)

The grid is each backend's own (`omnic.quant.grids`): the result W' is a fixed point of that
backend's quantizer, so the exporter that re-quantizes W' stores exactly the codes chosen here.
Two things make that hold:

- A group's scale is the backend's own, computed (dtype rounding included) from the group's
  current, error-updated weights when its first column comes up.
- The element that defined the scale (the anchor: the group's largest magnitude, signed) gets
  the code that reproduces the scale (-8 where s = m / -8; +7 for XNNPACK's positive extremes,
  where s = m / 7; ±7 for Core ML), whatever the updates did to it. Other codes are clipped to
  the backend's range, so none exceeds the anchor's magnitude, except XNNPACK's -8 under
  s = m / 7, which gives back the same s (-8s / -8). XNNPACK alone has a tie to break: see
  `_codes`.
Other codes follow the backend's own rounding rule, so with a diagonal H (nothing to compensate)
the result is the backend's RTN exactly (XNNPACK: except where its RTN is not a fixed point).
W' is checked against the backend's quantizer at the end; groups that are not fixed points
(none in the tests; scales that underflow or overflow their dtype could make some) are replaced
by the backend's re-quantization and counted (`gptq_with_stats`).
"""

from __future__ import annotations

import numpy as np

from omnic.quant import grids
from omnic.quant.reference import round_half_away

GGUF_BLOCK = 32  # GGUF Q4_0 blocks, whatever group size was asked


def _inv_upper(r: np.ndarray) -> np.ndarray:
    """Inverse of an upper triangular matrix by halves, so the work is in matrix products
    (numpy has no triangular solve; a general inverse costs ~6x more at in=1536)."""
    n = r.shape[0]
    if n <= 128:
        return np.triu(np.linalg.inv(r))
    k = n // 2
    a, c = _inv_upper(r[:k, :k]), _inv_upper(r[k:, k:])
    out = np.zeros_like(r)
    out[:k, :k], out[k:, k:] = a, c
    out[:k, k:] = -(a @ r[:k, k:]) @ c
    return out


def hinv_cholesky(h: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """U upper with U^T U = (H + damping)^-1, as `cholesky(cholesky_inverse(cholesky(H)),
    upper=True)` in the reference, float64. Computed once when several calls share H (`gptq`'s
    `hinv`: one call per target grid)."""
    hh = np.array(h, dtype=np.float64)
    n = hh.shape[0]
    dead = hh.diagonal() == 0
    # ref: H[dead, dead] = 1. The reference also zeroes W[:, dead]; we keep those weights: an
    # input never seen in calibration decouples (U's row and column are zero off the diagonal),
    # so the column gets plain RTN and its weights keep their meaning.
    hh[dead, dead] = 1.0
    hh[np.diag_indices(n)] += damp * np.mean(hh.diagonal())
    # H = R R^T with R upper (the Cholesky factor of H with rows and columns reversed), so
    # H^-1 = R^-T R^-1 and U = R^-1: one Cholesky and one triangular inverse.
    r = np.ascontiguousarray(np.linalg.cholesky(hh[::-1, ::-1])[::-1, ::-1])
    return _inv_upper(r)


class _Group:
    """One group's quantization state, set when its first column comes up.

    Attributes:
        stored: [out] the scale as the backend stores it, as float32 (what dequantizes).
        s: [out] the scale the backend chooses codes with (GGUF: the fp32 one; Core ML: fp16).
        anchor: [out] position in the group of the element that defined the scale.
        anchor_code: [out] the code that puts the anchor back on that scale.
        settled: [out] XNNPACK only: the codes so far already make the backend read back this
            scale (m < 0, or a +7 or -8 came first); see `_codes`.
    """

    def __init__(self, backend: str, x: np.ndarray):
        with np.errstate(invalid="ignore"):  # Core ML's codes of an all-zero group are NaN
            self.stored = grids.quantize(backend, x, "int4", x.shape[1], True).scale[:, 0]
        self.s, self.settled = self.stored, None
        rows = np.arange(x.shape[0])
        if backend == "coreml":  # max|w| / 7 over the weights cast to fp16, codes -7..7
            x16 = x.astype(np.float16)
            self.anchor = np.abs(x16).argmax(axis=1)
            m = x16[rows, self.anchor]
            self.anchor_code = np.where(self.stored == 0, 0, np.where(m < 0, -7, 7))
        else:
            self.anchor = np.abs(x).argmax(axis=1)
            m = x[rows, self.anchor]
            if backend == "xnnpack":  # s = m / -8 for a negative extreme, m / 7 for a positive
                self.anchor_code = np.where(m < 0, -8, np.where(m > 0, 7, 0))
                self.settled = m <= 0
            else:  # omnic, onnxruntime, gguf: s = m / -8 puts m on -8
                self.anchor_code = np.where(m != 0, -8, 0)
                # GGUF stores s in fp16 but chooses codes with the fp32 s (= omnic's)
                self.s = (m / np.float32(-8.0)).astype(np.float32)
        self.stored = self.stored.astype(np.float32)


def _codes(backend: str, x: np.ndarray, grp: _Group, pos: int) -> np.ndarray:
    """Codes of the column at position `pos` of its group (x [out], float32, error-updated).

    The backend's own rounding (see grids.py), clipped since error updates can push a weight
    beyond its group's extreme, and the anchor's code where the anchor sits. Updates
    `grp.settled` (XNNPACK).
    """
    s = grp.s
    with np.errstate(divide="ignore", invalid="ignore"):
        if backend == "omnic":
            c = np.where(s == 0, 0, round_half_away(x / np.where(s == 0, 1.0, s)))
        elif backend == "onnxruntime":
            c = round_half_away(x * np.where(s == 0, np.float32(0), np.float32(1) / s))
        elif backend == "gguf":  # trunc(w / s + 8.5) - 8: ties up
            inv = np.where(s == 0, 0, 1 / s)
            c = np.trunc(x * inv + np.float32(8.5)) - 8
        elif backend == "xnnpack":
            c = round_half_away(x / s)
        else:  # coreml: half to even of the fp16 quotient fp16(x) / s, computed as the
            # float32 quotient rounded to fp16 (the same value, and far faster than numpy's
            # fp16 arithmetic); s = 0 only for a group of zeros
            x16 = x.astype(np.float16).astype(np.float32)
            q16 = (x16 / grp.stored).astype(np.float16).astype(np.float32)
            c = np.where(s == 0, 0, np.round(np.nan_to_num(q16)))
    c = np.clip(c, -7 if backend == "coreml" else -8, 7).astype(np.int8)
    if backend == "xnnpack":
        # With s = m / 7, a -7 ahead of every +7 ties the anchor in magnitude, and XNNPACK's
        # quantizer (the first largest |w|) would read it as a negative extreme: s' = 7s / 8.
        # Take the nearer of -8 (which gives back s: -8s / -8) and -6 there. XNNPACK's own RTN
        # keeps such -7s: about 4% of its groups of random weights are not fixed points.
        tie = (c == -7) & ~grp.settled
        c[tie] = np.where(x[tie] / s[tie] < -7, -8, -6)
    hit = grp.anchor == pos
    c[hit] = grp.anchor_code[hit]
    if backend == "xnnpack":
        grp.settled |= (c == 7) | (c == -8)
    return c


def gptq_with_stats(w: np.ndarray, h: np.ndarray, backend: str, group_size: int, *,
                    damp: float = 0.01, block: int = 128,
                    hinv: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """`gptq`, plus the number of groups that were not fixed points of the backend's quantizer
    (replaced by its re-quantization; 0 in every test)."""
    w = np.asarray(w, dtype=np.float32)
    if not (np.isfinite(w).all() and np.isfinite(h).all()):
        raise ValueError("w and h must be finite")
    if w.ndim != 2 or np.shape(h) != (w.shape[1], w.shape[1]):
        raise ValueError(f"need w [out, in] and h [in, in]; got {w.shape} and {np.shape(h)}")
    if backend not in grids.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {grids.BACKENDS}")
    out_f, in_f = w.shape
    g = GGUF_BLOCK if backend == "gguf" else int(group_size)
    if g <= 0 or in_f % g:
        raise ValueError(f"group size {g} does not divide the input width {in_f}")
    # Whole groups per block, so a group's scale sees its columns with every update applied (the
    # reference reads them from W, which misses the updates of the current block). Inside a
    # block, the same lazy batching again on sub-blocks that divide the group: the column-by-
    # column updates then touch at most `sub` rows, the rest goes through matrix products.
    block = max(g, block // g * g)
    sub = max(d for d in range(1, 33) if g % d == 0)
    u = hinv_cholesky(h, damp) if hinv is None else hinv
    # Work on W^T (float64): column i is a contiguous row, and the updates are row operations.
    wt = np.ascontiguousarray(w.T, dtype=np.float64)
    codes = np.zeros((in_f, out_f), np.int8)
    scales = np.zeros((in_f // g, out_f), np.float32)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        w1, u1 = wt[i1:i2], u[i1:i2, i1:i2]  # w1 is a view: updates land in wt
        err1 = np.empty_like(w1)
        for j1 in range(0, i2 - i1, sub):
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
                col = i1 + i
                if col % g == 0:
                    grp = _Group(backend, np.ascontiguousarray(w1[i:i + g].T, np.float32))
                    scales[col // g] = grp.stored
                codes[col] = c = _codes(backend, w1[i].astype(np.float32), grp, col % g)
                # q as the backend dequantizes it: float32 code times float32 stored scale
                q = c.astype(np.float32) * grp.stored
                err1[i] = (w1[i] - q) / u1[i, i]
                w1[i + 1:j2] -= u1[i, i + 1:j2, None] * err1[i]
            w1[j2:] -= u1[j1:j2, j2:].T @ err1[j1:j2]
        wt[i2:] -= u[i1:i2, i2:].T @ err1  # the block's error, to the columns after it
    w_new = (codes.T.reshape(out_f, -1, g).astype(np.float32)
             * scales.T[..., None]).reshape(out_f, in_f)
    with np.errstate(invalid="ignore"):
        back = grids.quantize(backend, w_new, "int4", g, True).dequantize(w_new.shape)
    changed = (back != w_new).reshape(out_f, -1, g).any(axis=-1)
    w_new = np.where(np.repeat(changed, g, axis=1), back, w_new).astype(np.float32)
    return w_new, int(changed.sum())


def gptq(w: np.ndarray, h: np.ndarray, backend: str, group_size: int, *,
         damp: float = 0.01, block: int = 128, hinv: np.ndarray | None = None) -> np.ndarray:
    """Quantize w on `backend`'s int4 symmetric grid with GPTQ's error compensation.

    Args:
        w: float32 [out, in] (a torch.nn.Linear weight; groups run along `in`). Matrices that
            read the same input may be stacked along `out`.
        h: [in, in], the sum of x^T x over the calibration activations x [tokens, in].
        backend: one of `grids.BACKENDS`.
        group_size: weights per scale along `in` (GGUF always uses its blocks of 32).
        damp: added to H's diagonal, as a fraction of its mean (the reference's percdamp).
        block: columns per lazy batch update (rounded to whole groups).
        hinv: `hinv_cholesky(h, damp)`, when the caller computed it once for several calls.

    Returns:
        float32 W' [out, in], a fixed point of the backend's quantizer:
        `grids.quantize(backend, W', "int4", g, True).dequantize(W'.shape)` equals W'.
    """
    return gptq_with_stats(w, h, backend, group_size, damp=damp, block=block,
                           hinv=hinv)[0]


def output_error(w: np.ndarray, w_new: np.ndarray, h: np.ndarray) -> float:
    """trace((W' - W) H (W' - W)^T): the sum over calibration tokens of ||(W' - W) x||^2."""
    d = np.asarray(w_new, np.float64) - np.asarray(w, np.float64)
    return float(np.sum((d @ np.asarray(h, np.float64)) * d))
