"""GGUF tensor types: which type each tensor gets, and the quantizers that produce the bytes.

The block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and BF16 are gguf-py's numpy quantizers, which are
bit-exact with ggml-quants.c (checked by gguf-py's tests/test_quants.py, and here against
llama.cpp's quantizer in tests/targets/test_gguf.py).
ref: https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/quants.py
The K-quant mixtures (Q4_K_M, Q5_K_M, Q6_K) are not re-implemented: the file is written in F32
first and llama.cpp's own `llama_model_quantize` (through llama-cpp-python's low-level binding)
picks and quantizes each tensor's type.

Torch-free; the `gguf` package is imported only by the functions that write bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from omnic.constants import Schemes
from omnic.quant.activations import ActivationQuant, llama_cpp

if TYPE_CHECKING:
    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec
    from omnic.formats.gguf_arch import GgufTensor


@dataclass(frozen=True)
class FileType:
    """One value of `targets.gguf.file_type`."""

    name: str  # as written in the spec: "Q4_0", "Q4_K_M"...
    llama_ftype: int  # llama_ftype / gguf.LlamaFileType value (general.file_type)
    tensor_type: str | None  # ggml type of matrices, None for llama.cpp's K mixtures
    precision: str  # artifact.precision (tolerance table row)
    block: int  # elements per block along a row (1 for float types)


# ref: https://github.com/ggml-org/llama.cpp/blob/master/include/llama.h (enum llama_ftype)
FILE_TYPES = {
    ft.name: ft
    for ft in (
        FileType("F32", 0, "F32", "fp32", 1),
        FileType("F16", 1, "F16", "fp16", 1),
        FileType("BF16", 32, "BF16", "bf16", 1),
        FileType("Q8_0", 7, "Q8_0", "q8_0", 32),
        FileType("Q4_0", 2, "Q4_0", "q4_0", 32),
        FileType("Q4_1", 3, "Q4_1", "q4_1", 32),
        FileType("Q5_0", 8, "Q5_0", "q5_0", 32),
        FileType("Q5_1", 9, "Q5_1", "q5_1", 32),
        FileType("Q4_K_M", 15, None, "q4_k_m", 256),
        FileType("Q5_K_M", 17, None, "q5_k_m", 256),
        FileType("Q6_K", 18, None, "q6_k", 256),
    )
}
K_QUANTS = frozenset(name for name, ft in FILE_TYPES.items() if ft.tensor_type is None)

# GGUF names llama.cpp never quantizes (llama-quant.cpp `tensor_allows_quantization`,
# convert_hf_to_gguf keeps them F32): the MoE router and the convolution kernels of LFM2 and
# Mamba-2 (which gguf_arch already marks as no matrix: 3-D in omnic, squeezed to 2-D in the file).
KEEP_F32_SUFFIXES = ("ffn_gate_inp.weight", "shortconv.conv.weight", "ssm_conv1d.weight")
# 2-D tensors omnic keeps F32 that llama.cpp's K mixtures would quantize (llama-quant.cpp
# quantizes every 2-D "*weight" but the norms, ssm_conv1d and a few named ones): the Gated
# DeltaNet's beta and decay projections (not matrices: omnic.spec.inventory), kept F32 by a
# type override on llama.cpp's quantizer.
K_MIXTURE_F32 = ("ssm_alpha.weight", "ssm_beta.weight")


def _problem(field: str, message: str) -> Any:
    from omnic.targets.base import Problem

    return Problem("gguf", field, message)


def type_for_scheme(ts: "TensorScheme") -> tuple[str | None, str | None]:
    """The GGUF block type storing omnic scheme `ts` exactly (or finer), or why there is none.

    Returns:
        (type name, None) or (None, reason naming the nearest type).
    """
    if ts.scheme == Schemes.FP32:
        return "F32", None
    if ts.scheme == Schemes.FP16:
        return "F16", None
    if ts.scheme == Schemes.BF16:
        return "BF16", None
    if ts.scheme == Schemes.INT8:
        # Q8_0: symmetric int8, one fp16 scale per 32 weights - per-channel or any group that is a
        # multiple of 32 is stored at least as finely as asked.
        if ts.group_size is not None and ts.group_size % 32:
            return None, (f"int8 group_size {ts.group_size} has no GGUF type; Q8_0 keeps one "
                          "scale per 32 weights (nearest: group_size 32 -> Q8_0)")
        return "Q8_0", None
    if ts.scheme == Schemes.INT4:
        if ts.group_size == 32:
            return ("Q4_0" if ts.symmetric else "Q4_1"), None
        nearest = "Q4_0" if ts.symmetric else "Q4_1"
        return None, (f"int4 group_size {ts.group_size} has no GGUF type: Q4_0/Q4_1 use blocks "
                      f"of 32 (nearest: group_size 32 -> {nearest}; or file_type Q4_K_M, "
                      "llama.cpp's 256-wide super-blocks of 32)")
    return None, f"scheme {ts.scheme} has no GGUF type"


@dataclass(frozen=True)
class TypePlan:
    """The decided storage of every GGUF tensor."""

    file_type: FileType
    types: dict[str, str]  # GGUF tensor name -> ggml type written by omnic (F32 for K mixtures)
    k_overrides: dict[str, str]  # K mixtures: GGUF name -> type forced on llama.cpp's quantizer
    k_fallbacks: list[str]  # K mixtures: tensors with rows not whole 256-blocks (32-block type)


def plan_types(spec: "ResolvedSpec", tensors: list["GgufTensor"],
               schemes: "dict[str, TensorScheme] | None" = None
               ) -> tuple[TypePlan | None, list[Any]]:
    """Decide the file type and each tensor's type from `targets.gguf` and the quant plan.

    Args:
        schemes: the program's quant plan (`Program.schemes()`), which lowering stores; None
            computes it from the spec (pre-flight, which has only the spec).
    """
    from omnic.quant.select import tensor_schemes

    problems: list[Any] = []
    requested = spec.targets.gguf.file_type if spec.targets.gguf is not None else "auto"
    schemes = tensor_schemes(spec) if schemes is None else schemes
    if requested == "auto":
        default, why = type_for_scheme(_default_scheme(spec))
        if default is None:
            return None, [_problem("quantization.weights", why or "")]
        ft = FILE_TYPES[default]
    else:
        ft = FILE_TYPES[requested]

    types: dict[str, str] = {}
    k_overrides: dict[str, str] = {}
    k_fallbacks: list[str] = []
    for t in tensors:
        chosen = {schemes[s] for s in t.sources}
        if len(chosen) > 1:
            parts = "experts" if t.transform == "stack" else "parts (" + ", ".join(t.sources) + ")"
            problems.append(_problem("quantization.overrides", f"the {parts} of {t.name} have "
                                     "different schemes; llama.cpp stores them as one tensor"))
            continue
        ts = chosen.pop()
        if not t.is_matrix or t.name.endswith(KEEP_F32_SUFFIXES):
            types[t.name] = "F32"  # norms, biases, router, conv kernel: F32 as in llama.cpp
            if ft.tensor_type is None and t.name.endswith(K_MIXTURE_F32):
                k_overrides[t.name] = "F32"
            continue
        if ts.override is not None:
            qtype, why = type_for_scheme(ts)
            if qtype is None:
                problems.append(_problem(f"quantization.overrides[{ts.override}]",
                                         f"{t.name}: {why}"))
                continue
        elif ft.tensor_type is None:
            qtype = None  # llama.cpp's mixture decides
        else:
            qtype = ft.tensor_type
        width = t.shape[-1]
        # llama.cpp's K mixtures fall back to a 32-block type (Q4_K -> Q5_0, Q5_K -> Q5_1,
        # Q6_K -> Q8_0; llama-quant.cpp tensor_type_fallback) for rows that are not whole
        # 256-blocks, as for SmolLM's 576: allowed and reported. Anything that would end in F16
        # (rows not a multiple of 32) is refused, as it is for the block types.
        block = FILE_TYPES[qtype].block if qtype else 32
        if width % block:
            problems.append(_problem("targets.gguf.file_type" if ts.override is None else
                                     f"quantization.overrides[{ts.override}]",
                                     f"{t.name} has rows of {width}, not a multiple of the "
                                     f"{qtype or ft.name} block ({block}); llama.cpp would store "
                                     "it as F16 with a warning (nearest: F16 for this tensor)"))
            continue
        if ft.tensor_type is None:
            types[t.name] = "F32"
            if qtype is not None:
                k_overrides[t.name] = qtype
            elif width % ft.block:
                k_fallbacks.append(t.name)
        else:
            types[t.name] = qtype or "F32"
    if problems:
        return None, problems
    return TypePlan(ft, types, k_overrides, k_fallbacks), []


def _default_scheme(spec: "ResolvedSpec") -> "TensorScheme":
    from omnic.quant.select import TensorScheme

    w = spec.quantization.weights
    return TensorScheme(w.scheme, w.group_size, w.symmetric, None)


def activation_rounding(tensors: list["GgufTensor"], types: dict[str, str]
                        ) -> dict[str, ActivationQuant]:
    """Per omnic weight, how llama.cpp's CPU backend rounds the activations it multiplies
    (Q8_0 or Q8_K blocks, by the stored type: omnic.quant.activations); float types omitted.

    Args:
        tensors: the file's tensors and their omnic sources.
        types: GGUF tensor name -> stored type name, as read back from the file.
    """
    out = {}
    for t in tensors:
        aq = llama_cpp(types[t.name]) if t.is_matrix else None
        if aq is not None and t.axis == 1 and t.index:  # columns stored permuted (qwen35)
            aq = replace(aq, order=t.index)
        if aq is not None:
            out.update({name: aq for name in t.sources})
    return out


def stored_nbytes(shape: tuple[int, ...], type_name: str) -> int:
    """Bytes of one tensor of `shape` stored as `type_name` (no padding)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def run_llama_quantize(src: str, dst: str, ft: FileType, overrides: dict[str, str],
                       n_threads: int) -> list[tuple[int, str]]:
    """Quantize GGUF `src` to `dst` with llama.cpp's own quantizer (`llama_model_quantize`).

    Args:
        overrides: GGUF tensor name -> ggml type (the spec's per-tensor overrides).

    Returns:
        llama.cpp's log records (level, text) emitted while quantizing.

    Raises:
        RuntimeError: llama.cpp returned an error.
    """
    import ctypes
    import re

    import llama_cpp
    from gguf import GGMLQuantizationType

    from omnic.targets.gguf.runtime import capture_llama_log

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = ft.llama_ftype
    params.allow_requantize = False
    params.pure = False
    keep = []  # the override array and its strings must outlive the call
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (name, tname) in enumerate(overrides.items()):
            pattern = ("^" + re.escape(name) + "$").encode()
            keep.append(pattern)
            arr[i].pattern = pattern
            arr[i].type = int(GGMLQuantizationType[tname])
        arr[len(overrides)].pattern = None
        keep.append(arr)
        pointer = ctypes.POINTER(llama_cpp.llama_model_tensor_override)
        params.tt_overrides = ctypes.cast(arr, pointer)
    with capture_llama_log() as records:
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    del keep
    if rc != 0:
        tail = "".join(text for _, text in records[-5:]).strip()
        raise RuntimeError(f"llama_model_quantize to {ft.name} failed ({rc}): {tail}")
    return records
