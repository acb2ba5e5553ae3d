"""K-quant tensors rounded with an importance matrix by llama.cpp's own quantizer function.

`llama-quantize --imatrix` hands each tensor's importance (the mean of x^2 over calibration
tokens, one value per input column) to `ggml_quantize_chunk`, whose K-quant search then weighs
each weight's rounding error by it. llama-cpp-python's `llama_model_quantize` takes the importance
only as a pointer to a C++ `std::unordered_map`, which ctypes cannot build. So the mixture is
chosen and quantized by `llama_model_quantize` as before, then every tensor that has an importance
vector is quantized again, to the type llama.cpp chose for it, by `ggml_quantize_chunk` of the
same libggml with that importance, and its bytes are replaced in place (same type, same size).
Without an importance, `quantize_rows` gives `llama_model_quantize`'s bytes exactly
(tests/targets/test_gguf_imatrix.py), so the only difference is the importance.
  ref: https://github.com/ggml-org/llama.cpp/blob/master/src/llama-quant.cpp
       (llama_tensor_quantize_impl)
  ref: https://github.com/ggml-org/llama.cpp/blob/master/tools/imatrix/imatrix.cpp
       (the importance: sum of x^2 per column over the tokens, divided by their count)
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np


@lru_cache(maxsize=1)
def _ggml() -> Any:
    """The libggml-base that llama-cpp-python ships (the library llama_model_quantize uses)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(lib_dir.glob("libggml-base.*"))
    if not found:
        raise RuntimeError(f"no libggml-base in {lib_dir}")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    return lib


def quantize_rows(qtype: int, rows: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """`rows` [nrows, n_per_row] float32 quantized to ggml type `qtype` by ggml_quantize_chunk.

    Args:
        importance: float32 [n_per_row], or None for llama.cpp's unweighted search.

    Returns:
        The blocks as uint8 [nrows, bytes per row].
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    src = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = src.shape
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    dst = np.empty((nrows, n_per_row // block * size), dtype=np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    if imp is not None and imp.shape != (n_per_row,):
        raise ValueError(f"importance of {imp.shape} for rows of {n_per_row}")
    written = _ggml().ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, nrows,
                                          n_per_row, None if imp is None else imp.ctypes.data)
    if written != dst.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.nbytes}")
    return dst


def requantize(f32_file: Path, quantized_file: Path,
               importance: Mapping[str, np.ndarray | None]) -> list[str]:
    """Quantize again, in place in `quantized_file`, each tensor named in `importance` whose type
    llama.cpp made a block type, from its float32 values in `f32_file` (the file llama.cpp
    quantized).

    Args:
        importance: GGUF tensor name -> float32 [input columns] (or None: unweighted).

    Returns:
        The names of the tensors quantized again.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    source = {t.name: t for t in GGUFReader(f32_file).tensors}
    reader = GGUFReader(quantized_file, "r+")
    done = []
    for t in reader.tensors:
        if t.name not in importance or t.tensor_type in (GGMLQuantizationType.F32,
                                                           GGMLQuantizationType.F16,
                                                           GGMLQuantizationType.BF16):
            continue
        values = np.asarray(source[t.name].data, dtype=np.float32)
        if values.ndim != 2:  # stacked experts: one importance per expert, not handled here
            continue
        t.data[...] = quantize_rows(int(t.tensor_type), values, importance[t.name]).reshape(
            t.data.shape)
        done.append(t.name)
    reader.data.flush()
    del reader
    return done
