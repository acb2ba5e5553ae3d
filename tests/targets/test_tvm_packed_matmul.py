"""The TVM target's packed-weight kernels (omnic/targets/tvm/kernels/packed_matmul.py), compiled
alone and run on the host, against float64 numpy over the weights decoded by an independent
reading of the documented layout (test_tvm._decode_stored), not by the target's own dequantize.

Tolerance: 1e-5 of the largest |y|. The kernels sum float32 products in another order than numpy
(16 lane partial sums per group, scaled per group), so they differ from float64 by float32
rounding (~1e-7 relative here), far below one quantization step of the weights (~1e-2).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from omnic.quant.select import TensorScheme  # noqa: E402
from omnic.targets.tvm.kernels import packed_matmul as K  # noqa: E402
from omnic.targets.tvm.quant import pack  # noqa: E402
from test_tvm import _decode_stored  # noqa: E402

CASES = [  # scheme, rows, width, group (None: per channel), symmetric
    ("int4", 24, 96, 32, True),
    ("int4", 24, 96, 32, False),
    ("int4", 24, 96, 16, True),  # blocks of 16 inside a group of 16
    ("int4", 24, 256, 128, False),
    ("int4", 7, 40, 8, True),  # odd rows, blocks of 8
    ("int8", 24, 96, None, True),
    ("int8", 24, 96, 32, False),
    ("int8", 10, 48, 16, True),
]


def _run(func, args: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    lib["main"](*tensors, out)
    return out.numpy()


def _packed(scheme: str, n: int, k: int, group: int | None, symmetric: bool, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    p = pack("w", w, TensorScheme(scheme, group, symmetric))
    stored = {f"w.{suffix}": a for suffix, a in p.arrays.items()}
    decoded = _decode_stored(stored, "w", {"scheme": scheme, "group_size": group,
                                          "symmetric": symmetric}, (n, k))
    zero = p.arrays.get("zero", np.zeros((1,) if scheme == "int4" else (1, 1), np.uint8))
    return p, decoded, [p.arrays["q"], p.arrays["scale"], zero]


@pytest.mark.parametrize("scheme, n, k, group, symmetric", CASES)
@pytest.mark.parametrize("tokens", [1, 5])  # the decode (GEMV) and prefill (tile) branches
def test_packed_matmul_equals_decoded_weights(scheme, n, k, group, symmetric, tokens) -> None:
    p, decoded, stored = _packed(scheme, n, k, group, symmetric)
    make = K.int4_kernel if scheme == "int4" else K.int8_kernel
    func = make(n, k, p.group, symmetric=symmetric, scale_dtype=str(p.arrays["scale"].dtype))
    x = np.random.default_rng(1).standard_normal((tokens, k)).astype(np.float32)
    got = _run(func, [x, *stored], (tokens, n))
    want = x.astype(np.float64) @ decoded.T
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("scheme, n, k, group, symmetric",
                         [c for c in CASES if c[0] == "int4"][:3] + [CASES[5], CASES[6]])
def test_gather_decodes_the_rows_asked_for(scheme, n, k, group, symmetric) -> None:
    p, decoded, stored = _packed(scheme, n, k, group, symmetric)
    func = K.gather_kernel(scheme, n, k, p.group, symmetric=symmetric,
                           scale_dtype=str(p.arrays["scale"].dtype))
    ids = np.array([3, 0, n - 1, 3], dtype=np.int64)
    got = _run(func, [ids, *stored], (len(ids), k))
    np.testing.assert_allclose(got, decoded[ids], rtol=1e-6, atol=1e-7)


def test_float16_table_rows() -> None:
    w = np.random.default_rng(4).standard_normal((9, 24)).astype(np.float16)
    ids = np.array([8, 0, 8], dtype=np.int64)
    got = _run(K.gather_kernel("fp16", 9, 24, 24, symmetric=True, scale_dtype="float16"),
               [ids, w], (3, 24))
    np.testing.assert_array_equal(got, w[ids].astype(np.float32))


def test_float16_weights() -> None:
    w = np.random.default_rng(2).standard_normal((12, 32)).astype(np.float16)
    x = np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)
    got = _run(K.float_kernel(12, 32, "float16"), [x, w], (3, 12))
    want = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
