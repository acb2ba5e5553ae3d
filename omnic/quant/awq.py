"""AWQ for omnic's int4 symmetric groups: activation-aware scales and weight clipping (torch-free).

Both searches work from calibration statistics, not raw activations: `h` = sum over tokens of
x^T x ([in, in], float64) and `x_abs_mean` = mean |x| per input channel. The output error of a
weight change d = w_new - w over the calibration tokens is then exactly
sum_t ||d x_t||^2 = trace(d h d^T) (`output_error`), so no activation has to be kept.

- `search_scales`: per-input-channel scales s = x_abs_mean**alpha, alpha on a grid; the consumers'
  weights are multiplied by s (their columns) and the producer's output divided by it, which
  leaves W x unchanged in float but moves quantization error away from the salient channels.
  The loss is the summed output error of the consumers' own outputs (llm-awq and AutoAWQ measure
  the enclosing block's output, which needs the block itself; the linear outputs are what the
  statistics give exactly).
  ref: https://github.com/mit-han-lab/llm-awq/blob/main/awq/quantize/auto_scale.py
  ref: https://github.com/casper-hansen/AutoAWQ/blob/main/awq/quantize/quantizer.py
- `search_clip`: per row and group, the clip threshold that minimises that group's share of the
  output error; returns float weights (the target's own quantizer rounds them).
  ref: https://github.com/mit-han-lab/llm-awq/blob/main/awq/quantize/auto_clip.py

Quantization here is omnic's reference int4 (`fake_quantize(w, "int4", group_size, True)`,
s = m / -8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnic.quant.reference import fake_quantize


@dataclass(frozen=True)
class ScaleSearch:
    """The outcome of `search_scales`.

    Attributes:
        scales: float32 [in]; multiply the consumers' weight columns by it and divide the
            producer's output by it.
        ratio: the chosen exponent alpha (0.0 when no scaling beats round-to-nearest).
        error: summed output error of the consumers quantized with `scales` (float64).
        error_rtn: the same without scaling (s = 1, plain round-to-nearest).
    """

    scales: np.ndarray
    ratio: float
    error: float
    error_rtn: float


def output_error(w: np.ndarray, w_new: np.ndarray, h: np.ndarray) -> float:
    """trace((w_new - w) h (w_new - w)^T) in float64: sum over tokens of ||(w_new - w) x_t||^2.

    Args:
        w: [out, in] original weight.
        w_new: [out, in] changed (e.g. quantized) weight.
        h: [in, in] sum over calibration tokens of x^T x.
    """
    d = np.asarray(w_new, np.float64) - np.asarray(w, np.float64)
    return float(np.einsum("oi,oi->", d @ np.asarray(h, np.float64), d))


def _scaled_error(weights: list[np.ndarray], s: np.ndarray, h: np.ndarray,
                  group_size: int) -> float:
    # (W * s) (x / s) = W x: quantizing W * s and dividing back by s is the weight the scaled
    # model computes with, seen from the unscaled input x, so h needs no rescaling.
    row = s[None, :]
    return sum(output_error(w, fake_quantize(w * row, "int4", group_size, True) / row, h)
               for w in weights)


def search_scales(weights: list[np.ndarray], h: np.ndarray, x_abs_mean: np.ndarray,
                  group_size: int, n_grid: int = 20) -> ScaleSearch:
    """AWQ's grid search of per-input-channel scales for matrices sharing one input.

    For ratio in {0, 1/n, ..., (n-1)/n}: s = x_abs_mean**ratio clipped to >= 1e-4 and divided
    by sqrt(max(s) min(s)); each weight is quantized as fake_quantize(w * s) / s and the loss is
    the summed `output_error`. s = 1 (round-to-nearest) is always a candidate, so the result is
    never worse than RTN on the calibration statistics.

    Args:
        weights: matrices [out_i, in] consuming the same input (q, k, v after one norm; gate, up).
        h: [in, in] sum over calibration tokens of x^T x.
        x_abs_mean: [in] mean |x| per input channel.
        group_size: int4 group size along the input dimension.
        n_grid: number of ratios tried.

    Returns:
        The best scales (float32), their ratio and error, and the RTN error.
    """
    weights = [np.asarray(w, np.float32) for w in weights]
    h = np.asarray(h, np.float64)
    x_abs_mean = np.asarray(x_abs_mean, np.float64).reshape(-1)
    n_in = x_abs_mean.shape[0]
    if h.shape != (n_in, n_in) or any(w.ndim != 2 or w.shape[1] != n_in for w in weights):
        raise ValueError(f"weights {[w.shape for w in weights]}, h {h.shape} and x_abs_mean "
                         f"{x_abs_mean.shape} disagree on the input width")
    ones = np.ones(n_in, np.float32)
    error_rtn = _scaled_error(weights, ones, h, group_size)
    best = (ones, 0.0, error_rtn)
    # ratio 0 gives s = 1 exactly (x**0 == 1, also for x == 0): the RTN baseline above.
    for i in range(1, n_grid):
        ratio = i / n_grid
        # ref: auto_scale.py auto_scale_block._search_module_scale (the same three lines)
        s = np.maximum(x_abs_mean ** ratio, 1e-4)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # the scales as returned
        err = _scaled_error(weights, s, h, group_size)
        if err < best[2]:
            best = (s, ratio, err)
    return ScaleSearch(best[0], float(best[1]), float(best[2]), float(error_rtn))


def search_clip(w: np.ndarray, h: np.ndarray, group_size: int, n_grid: int = 20,
                max_shrink: float = 0.5) -> np.ndarray:
    """AWQ's clipping search: per row and group, the threshold with the lowest output error.

    Candidates are c = max|w_group| * (1 - i / n_grid) for i in range(int(max_shrink * n_grid))
    (as llm-awq and AutoAWQ: shrinks 0, 0.05, ..., 0.45 by default; i = 0, no clipping, always
    included). Each clipped group is quantized with omnic's int4 and scored on its own share of
    the output error, sum over rows of d^T h_gg d with d = w_q - w on the group's columns and
    h_gg the diagonal block of h: the error of the group's partial dot products, which is what
    auto_clip.py measures on sampled tokens (cross-group terms are ignored, as there).

    Args:
        w: [out, in] weight.
        h: [in, in] sum over calibration tokens of x^T x.
        group_size: int4 group size along the input dimension.
        n_grid: grid resolution of the shrink factor.
        max_shrink: largest fraction of max|w_group| the search may cut (exclusive).

    Returns:
        float32 [out, in]: `w` clipped group by group to [-c, c], not quantized.
    """
    w = np.asarray(w, np.float32)
    h = np.asarray(h, np.float64)
    out_f, in_f = w.shape
    g = int(group_size)
    if g <= 0 or in_f % g or h.shape != (in_f, in_f):
        raise ValueError(f"group_size {group_size} and h {h.shape} do not fit w {w.shape}")
    n_groups = in_f // g
    wg = w.reshape(out_f, n_groups, g)
    idx = np.arange(n_groups)
    # [groups, g, g]: the diagonal blocks of h
    h_gg = h.reshape(n_groups, g, n_groups, g)[idx, :, idx, :]
    w_gt = wg.astype(np.float64).transpose(1, 0, 2)  # [groups, out, g]
    max_abs = np.abs(wg).max(axis=-1, keepdims=True)  # [out, groups, 1]

    best_err = np.full((out_f, n_groups), np.inf)
    best_c = max_abs.copy()
    # ref: auto_clip.py auto_clip_layer (the loop over i_s); vectorised over rows and groups
    for i in range(max(1, int(max_shrink * n_grid))):
        c = (max_abs * np.float32(1 - i / n_grid)).astype(np.float32)
        clipped = np.clip(wg, -c, c).reshape(out_f, in_f)
        q = fake_quantize(clipped, "int4", g, True).reshape(out_f, n_groups, g)
        d = q.astype(np.float64).transpose(1, 0, 2) - w_gt  # [groups, out, g]
        err = np.einsum("gor,gor->og", d @ h_gg, d)  # d^T h_gg d per row and group
        better = err < best_err  # strict: ties keep the smaller shrink
        best_err = np.where(better, err, best_err)
        best_c = np.where(better[..., None], c, best_c)
    return np.clip(wg, -best_c, best_c).reshape(out_f, in_f).astype(np.float32)
