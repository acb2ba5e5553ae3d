"""ggml storage types and llama.cpp's K-quant mixtures, without llama.cpp or gguf-py (torch-free).

`omnic plan` must not import gguf-py, so the block sizes live here as data (a test pins them to
`gguf.GGML_QUANT_SIZES`). `k_mixture_types` is llama.cpp's `llama_tensor_get_type` for the file
types omnic offers (Q4_K_M, Q5_K_M, Q6_K) on llama-family tensors: it predicts what
`llama_model_quantize` will choose, so the plan and `omnic plan --explain-quant` can say it before
anything is built (a test compares it with llama.cpp's own choice).

`quantize` and `dequantize` convert arrays through gguf-py (llama.cpp's reference quantizers in
numpy), imported only when they are called.
  ref: https://github.com/ggml-org/llama.cpp/blob/master/src/llama-quant.cpp
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    import numpy as np

# type -> (elements per block, bytes per block).
# ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h (block_q4_0 ...)
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),   # fp16 scale + 32 int8
    "Q4_0": (32, 18),   # fp16 scale + 32 nibbles
    "Q4_1": (32, 20),   # fp16 scale + fp16 min + 32 nibbles
    "Q5_0": (32, 22),   # fp16 scale + 32 high bits + 32 nibbles
    "Q5_1": (32, 24),
    "Q4_K": (256, 144),  # fp16 d + fp16 dmin + 12 bytes of 6-bit scales/mins + 128 nibbles
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}

# What each tensor type stores, for explanations.
GRIDS = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "Q8_0": "int8 -127..127, fp16 scale per 32",
    "Q4_0": "int4 -8..7 (scale = extreme / -8), fp16 scale per 32",
    "Q4_1": "uint4 0..15, fp16 scale + fp16 min per 32",
    "Q5_0": "int5, fp16 scale per 32",
    "Q5_1": "uint5, fp16 scale + min per 32",
    "Q4_K": "4-bit super-blocks of 256 (8 x 32, 6-bit scales and mins)",
    "Q5_K": "5-bit super-blocks of 256 (8 x 32, 6-bit scales and mins)",
    "Q6_K": "6-bit super-blocks of 256 (16 x 16, 8-bit scales)",
}

# The main type of each K mixture (llama_ftype_get_default_type) and the 32-block type a tensor
# whose rows are not whole 256-blocks falls back to (tensor_type_fallback).
MIXTURE_DEFAULT = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def nbytes(shape: Iterable[int], type_name: str) -> int:
    """Bytes of one tensor of `shape` stored as ggml type `type_name` (rows of whole blocks)."""
    block, size = BLOCKS[type_name]
    n = 1
    for d in shape:
        n *= int(d)
    return n // block * size


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the _M mixtures."""
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def _fallback(type_name: str, ncols: int) -> str:
    block = BLOCKS[type_name][0]
    if ncols % block == 0:
        return type_name
    out = FALLBACK.get(type_name, type_name)
    return out if ncols % BLOCKS[out][0] == 0 else "F16"


def k_mixture_types(file_type: str, matrices: Iterable[tuple[str, tuple[int, ...]]],
                    forced: Mapping[str, str], n_layers: int, n_experts: int = 0
                    ) -> dict[str, str]:
    """The type llama.cpp's quantizer gives each quantizable tensor of a K-mixture file.

    Args:
        file_type: "Q4_K_M", "Q5_K_M" or "Q6_K".
        matrices: (GGUF name, numpy shape) of every tensor llama.cpp quantizes (2-D and up, not
            a norm, not the MoE router).
        forced: GGUF name -> type of the tensors omnic forces (the spec's overrides, passed to
            llama.cpp as tensor-type overrides: they skip the mixture rules).
        n_layers: decoder layers (llama.cpp's n_ffn_down).
        n_experts: MoE experts (0 or 1: dense).

    Returns:
        GGUF name -> ggml type, after llama.cpp's fallback for rows that are not whole blocks.
    """
    default = MIXTURE_DEFAULT[file_type]
    # llama.cpp counts attn_v / ffn_down tensors in the order it walks them: the file's order
    # (omnic writes layer by layer) in the llama.cpp of llama-cpp-python 0.3.36 (tested); a
    # manual override skips the rules and does not advance the counter.
    items = list(matrices)
    names = {n for n, _ in items}
    tied = "output.weight" not in names
    n_attn_v = sum(1 for n in names if "attn_v.weight" in n or "attn_qkv.weight" in n)
    i_attn_v = i_ffn_down = 0
    out: dict[str, str] = {}
    for name, shape in items:
        ncols = int(shape[-1])
        if name in forced:
            out[name] = _fallback(forced[name], ncols)
            continue
        t = default
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            t = "Q8_0" if ncols % BLOCKS[default][0] else "Q6_K"
        elif name == "token_embd.weight":
            pass
        elif "attn_v.weight" in name or "attn_qkv.weight" in name:
            if file_type in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
                t = "Q6_K"
            if n_experts == 8:
                t = "Q8_0"
            i_attn_v += 1
        elif "attn_k.weight" in name:
            if n_experts == 8:
                t = "Q8_0"
        elif "ffn_down" in name:
            i_layer = int(name.split(".")[1]) if n_experts > 1 else i_ffn_down
            if file_type in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_layer, n_layers):
                t = "Q6_K"
            i_ffn_down += 1
        elif "attn_output.weight" in name:
            if n_experts == 8 and file_type == "Q4_K_M":
                t = "Q5_K"
        out[name] = _fallback(t, ncols)
    return out


def quantize(values: "np.ndarray", type_name: str) -> "np.ndarray":
    """float32 values -> the array GGUFWriter stores for ggml type `type_name`.

    F32/F16 come back as float arrays, every other type as uint8 rows of blocks.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[type_name]
    values = np.asarray(values)
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if qtype == GGMLQuantizationType.F16:
        return _by_rows(values, lambda r: r.astype(np.float16), values.shape[-1], np.float16)
    width = quants.quant_shape_to_byte_shape(values.shape[-1:], qtype)[0]
    return _by_rows(values, lambda r: quants.quantize(np.ascontiguousarray(r, np.float32), qtype),
                    width, np.uint8)


def dequantize(data: "np.ndarray", qtype: Any) -> "np.ndarray":
    """gguf-py's `quants.dequantize` (stored rows -> float32), a chunk of rows at a time."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    data = np.asarray(data)
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return _by_rows(data, lambda r: r.astype(np.float32), data.shape[-1], np.float32)
    width = quants.quant_shape_from_byte_shape(data.shape[-1:], qtype)[0]
    return _by_rows(data, lambda r: quants.dequantize(r, qtype), width, np.float32)


def _by_rows(values: "np.ndarray", convert: Any, width: int, dtype: Any) -> "np.ndarray":
    """`convert` applied to the rows of `values` a chunk at a time, into one preallocated array.

    ggml blocks never cross a row, so the bytes are those of one whole-tensor call, without
    gguf-py's temporaries of the whole tensor (a list of parts, then their concatenation: 2 GB
    for Llama-3.2-1B's 128256 x 2048 embedding).
    """
    import numpy as np

    if values.ndim == 0:
        values = values.reshape(1)
    rows = values.reshape(-1, values.shape[-1])
    out = np.empty((rows.shape[0], width), dtype=dtype)
    step = max(1, CHUNK // max(rows.shape[1], width, 1))
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = convert(rows[i:i + step])
    return out.reshape(*values.shape[:-1], width)


CHUNK = 1 << 22  # values (or bytes) per conversion call
