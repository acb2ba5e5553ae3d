"""GPTQ on each backend's own int4 grid (omnic.quant.gptq): fixed points, error, edge cases.

Weights are random normal with outliers; activations are correlated (x = z @ A) with a few large
channels, the case where compensating errors across columns pays. Every comparison with a
backend's quantizer goes through `omnic.quant.grids`, itself tested bit-exact against the
backends' own code (test_grids.py).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from omnic.quant import grids
from omnic.quant.gptq import gptq, gptq_with_stats, hinv_cholesky, output_error
from omnic.quant.reference import round_half_away


def weights(rows: int = 64, cols: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.05)
    w[rng.integers(0, rows, 24), rng.integers(0, cols, 24)] *= 10  # outliers
    return w


def activations(tokens: int = 512, cols: int = 256, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.eye(cols) + rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = rng.standard_normal((tokens, cols)) @ a
    x[:, [3, 70, 200]] *= 20  # a few large channels
    return x


def rtn(backend: str, w: np.ndarray, group: int) -> np.ndarray:
    return grids.quantize(backend, w, "int4", group, True).dequantize(w.shape)


def not_fixed(backend: str, w: np.ndarray, group: int) -> np.ndarray:
    """[out, groups] True where the backend's quantizer changes w."""
    g = 32 if backend == "gguf" else group
    return (rtn(backend, w, g) != w).reshape(w.shape[0], -1, g).any(axis=-1)


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("backend", grids.BACKENDS)
def test_gptq_is_a_fixed_point_of_the_backend_and_beats_its_rtn(backend, group):
    w, x = weights(), activations()
    h = x.T @ x
    w_new, changed = gptq_with_stats(w, h, backend, group)
    assert w_new.dtype == np.float32 and w_new.shape == w.shape
    assert changed == 0
    # Exact in float32 for every backend, Core ML included: its fp16 scale s is read back from
    # the anchor's fp16(7 s) (test_coreml_scale_reads_back), and code * s is exact in float32.
    g = 32 if backend == "gguf" else group
    np.testing.assert_array_equal(rtn(backend, w_new, g), w_new)
    # Measured ratio to RTN's output error, group 32 / 128: omnic and onnxruntime 0.32 / 0.45,
    # gguf 0.32 (always blocks of 32), coreml 0.34 / 0.40, xnnpack 0.34 / 0.41.
    ratio = output_error(w, w_new, h) / output_error(w, rtn(backend, w, g), h)
    assert ratio < 0.6, ratio


@pytest.mark.parametrize("backend", grids.BACKENDS)
def test_diagonal_h_gives_the_backends_rtn(backend):
    """A diagonal H (h = I, or any diagonal) makes U diagonal, damping included: no error
    propagates, so each code is the backend's own rounding of the original weight. XNNPACK
    differs exactly where its own RTN is not a fixed point (a -7 ahead of the +7 that defined
    s = m / 7), and there GPTQ's groups are."""
    w = weights(128, 256)
    expected = rtn(backend, w, 32)
    rtn_not_fixed = not_fixed(backend, expected, 32)
    for h in (np.eye(256), np.diag(np.random.default_rng(2).uniform(0.1, 10.0, 256))):
        w_new, changed = gptq_with_stats(w, h, backend, 32)
        assert changed == 0 and not not_fixed(backend, w_new, 32).any()
        differs = (w_new != expected).reshape(128, -1, 32).any(axis=-1)
        np.testing.assert_array_equal(differs, rtn_not_fixed)
    assert rtn_not_fixed.any() == (backend == "xnnpack")


def test_gguf_uses_blocks_of_32_whatever_the_group_size():
    w, x = weights(), activations()
    h = x.T @ x
    w128, changed = gptq_with_stats(w, h, "gguf", 128)
    assert changed == 0
    np.testing.assert_array_equal(w128, gptq(w, h, "gguf", 32))
    np.testing.assert_array_equal(grids.gguf(w128, "int4", 128, True).dequantize(w.shape), w128)


def test_zero_row_zero_group_and_dead_input():
    w, x = weights(), activations()
    w[5] = 0.0  # a zero row has no error to spread
    w[7, :32] = 0.0  # neither has a leading zero group
    x[:, 40] = 0.0  # an input never seen: diag(h) == 0
    h = x.T @ x
    for backend in grids.BACKENDS:
        w_new, changed = gptq_with_stats(w, h, backend, 32)
        assert changed == 0 and np.isfinite(w_new).all()
        assert not w_new[5].any() and not w_new[7, :32].any()
        # The dead column is kept (the reference zeroes it) and receives no error: it is its
        # original weights rounded on its group's scale, within half a step.
        with np.errstate(invalid="ignore"):  # Core ML's codes of a zero group are NaN
            step = np.abs(grids.quantize(backend, w_new, "int4", 32, True).scale[:, 1])
        step = step.astype(np.float32)
        assert np.all(np.abs(w_new[:, 40] - w[:, 40]) <= step / 2 * (1 + 1e-3))
        assert np.count_nonzero(w_new[:, 40]) > 32


def test_groups_that_are_not_fixed_points_are_counted_and_requantized(monkeypatch):
    """The safety net, exercised by breaking the anchors: codes -7..7 cannot hold s = m / -8."""
    from omnic.quant import gptq as module

    codes = module._codes
    monkeypatch.setattr(module, "_codes", lambda *a: np.clip(codes(*a), -7, 7))
    w, x = weights(), activations()
    w_new, changed = gptq_with_stats(w, x.T @ x, "omnic", 32)
    assert changed == w.size // 32
    np.testing.assert_array_equal(rtn("omnic", w_new, 32), w_new)


def test_output_error_is_the_sum_over_tokens():
    w, x = weights(), activations()
    w_new = gptq(w, x.T @ x, "omnic", 32)
    d = w_new.astype(np.float64) - w.astype(np.float64)
    direct = sum(float(np.sum((d @ x_t) ** 2)) for x_t in x)
    assert output_error(w, w_new, x.T @ x) == pytest.approx(direct, rel=1e-9)
    assert output_error(w, w, x.T @ x) == 0.0


def naive_omnic_gptq(w: np.ndarray, h: np.ndarray, g: int, damp: float = 0.01) -> np.ndarray:
    """GPTQ's Algorithm 1 without lazy batches, on omnic's grid: every column's error goes to
    every later column at once, U = cholesky(inv(H)) transposed."""
    hh = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(hh)).T
    cur, out = w.astype(np.float64), np.zeros_like(w)
    rows = np.arange(len(w))
    for i in range(w.shape[1]):
        if i % g == 0:
            grp = cur[:, i:i + g].astype(np.float32)
            anchor = np.abs(grp).argmax(axis=1)
            s = grp[rows, anchor] / np.float32(-8)
        c = np.clip(round_half_away(cur[:, i].astype(np.float32) / s), -8, 7)
        c[anchor == i % g] = -8
        out[:, i] = c.astype(np.float32) * s
        cur[:, i + 1:] -= np.outer((cur[:, i] - out[:, i]) / u[i, i], u[i, i + 1:])
    return out


@pytest.mark.parametrize("block", [32, 128, 256])
def test_lazy_batches_match_the_unbatched_algorithm(block):
    w, x = weights(), activations()
    h = x.T @ x
    w_new, naive = gptq(w, h, "omnic", 32, block=block), naive_omnic_gptq(w, h, 32)
    # The same sums in another order: a few codes may flip where a weight sits on a half step.
    assert np.mean(w_new == naive) > 0.999
    assert output_error(w, w_new, h) == pytest.approx(output_error(w, naive, h), rel=1e-3)


def test_hinv_cholesky_is_the_references():
    x = activations()
    x[:, 9] = 0.0
    h = x.T @ x
    u = hinv_cholesky(h, 0.01)
    hh = h.copy()
    hh[9, 9] = 1.0
    hh += 0.01 * np.mean(np.diag(hh)) * np.eye(len(h))
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(hh)).T, rtol=1e-7, atol=1e-12)
    assert not np.tril(u, -1).any()


def test_coreml_scale_reads_back():
    """Core ML computes s = 2 max|w| / 14 in fp16; for every fp16 max|w| (below 32752, where
    2 max|w| overflows) the group [7 s] gives back s, so W' = code * s keeps its scale."""
    m = np.arange(1, 0x77FF, dtype=np.uint16).view(np.float16).astype(np.float32)[:, None]
    with np.errstate(invalid="ignore"):  # scales that underflow to 0: NaN codes
        s = grids.coreml(m, "int4", 1, True).scale.astype(np.float32)
        back = grids.coreml(7 * s, "int4", 1, True).scale.astype(np.float32)
    assert (s > 0).mean() > 0.9
    np.testing.assert_array_equal(back, s)


def test_module_is_torch_free():
    code = "import sys, omnic.quant.gptq; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
