"""Packed weights of the TVM target: their storage forms, and their decoding.

Every tensor the quant plan stores below fp32 is written to the params file in a packed form and
becomes a graph input. The host build decodes a linear's weight or the embedding table inside
its kernels (llm_graph.py, kernels/packed_matmul.py); the generic graph (GPU device builds, and
any other packed tensor) recomputes the float32 matrix with plain torch ops (`apply_packing`:
bitwise and, casts, multiply) that the Relax frontend imports. Nothing is pre-dequantized at
build time, so the deployed file is the packed one.

Layouts (a matrix is [out, in], groups of `g` consecutive inputs share a scale; G = in / g):

| scheme          | `.q`               | `.scale`        | `.zero`         | w'               |
|-----------------|--------------------|-----------------|-----------------|------------------|
| fp16            | float16 [out, in]  | -               | -               | float32(q)       |
| int8 symmetric  | int8 [out, in],    | f16/f32 [out,G] | -               | q * s            |
|                 | codes -127..127    |                 |                 |                  |
| int8 asymmetric | uint8 [out, in],   | f16/f32 [out,G] | uint8 [out,G]   | (q - z) * s      |
|                 | codes 0..255       |                 |                 |                  |
| int4 symmetric  | uint8 [out, in/2], | f16/f32 [out,G] | -               | (nibble - 8) * s |
|                 | nibble = code + 8  |                 |                 |                  |
| int4 asymmetric | uint8 [out, in/2], | f16/f32 [out,G] | uint8           | (nibble - z) * s |
|                 | nibble = code      |                 | [ceil(out*G/2)] |                  |

int4 packs two codes per byte in blocks of B = `nibble_block(group)` consecutive inputs (32 for
any group size that is a multiple of 32): byte i of a block holds element i in its low nibble and
element i + B/2 in its high nibble, the order of llama.cpp's Q4_0 blocks. The kernels
(kernels/packed_matmul.py) then decode both halves of a byte against contiguous activations.
Zero points are nibbles too, the [out, G] matrix flattened row-major, element 2j low and 2j+1
high, padded with one zero nibble when out*G is odd (the memory plan's "uint4 per group").
ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c (quantize_row_q4_0)
Scales are stored as float16 (as MLC-LLM's q4f16_1 does) when every scale of the tensor is a
normal float16 number; otherwise that tensor keeps float32 scales rather than lose precision.
ref: https://github.com/mlc-ai/mlc-llm/blob/main/python/mlc_llm/quantization/group_quantization.py

The codes come from omnic's numpy reference quantizer (`omnic.quant.reference.quantize`); the
float16 rounding of the scales is this target's own, so `dequantize` (numpy, from the stored
arrays) is what the artifact really computes with and becomes `artifact.reference_weights`.
The graph and `dequantize` perform the same float32 operations, so they agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from omnic.quant.reference import quantize

if TYPE_CHECKING:
    import torch

    from omnic.quant.select import TensorScheme

# Smallest normal float16: below it a scale would lose mantissa bits (subnormal).
_F16_MIN_NORMAL = 2.0**-14
_F16_MAX = 65504.0


@dataclass(frozen=True)
class PackedTensor:
    """One weight as this target stores it.

    Attributes:
        name: canonical tensor name (`layers.0.attn.q.weight`).
        scheme: fp16, bf16, int8 or int4.
        shape: the logical [out, in] shape.
        group_size: elements per scale along `in` (None: one per row; float schemes: None).
        symmetric: no zero point when True.
        arrays: stored arrays by suffix, in graph-input order: "q", then "scale", then "zero".
    """

    name: str
    scheme: str
    shape: tuple[int, ...]
    group_size: int | None
    symmetric: bool
    arrays: dict[str, np.ndarray]

    @property
    def group(self) -> int:
        return self.shape[-1] if self.group_size is None else self.group_size

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for the artifact's descriptor and quantization summary."""
        return {
            "scheme": self.scheme,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "stored": {k: {"dtype": str(a.dtype), "shape": list(a.shape)}
                       for k, a in self.arrays.items()},
        }

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


def packing_problem(shape: tuple[int, ...], scheme: str, group_size: int | None) -> str | None:
    """Why a tensor cannot be packed in this layout, or None."""
    if scheme == "bf16":
        # apache-tvm 0.27's Relax frontend converts every parameter with tensor.numpy(), which
        # has no bfloat16 ("Got unsupported ScalarType BFloat16"): found by bench/quant_quality.py
        # ref: tvm/relax/frontend/torch/exported_program_translator.py
        #      (_convert_pytorch_tensor_to_tvm)
        return "TVM's Relax frontend cannot import bf16 parameters (torch's .numpy() has no bf16)"
    if scheme in ("fp32", "fp16"):
        return None
    if len(shape) != 2:
        return f"{scheme} packs matrices only, got shape {list(shape)}"
    width = shape[-1]
    g = width if group_size is None else group_size
    if width % g:
        return f"group_size {g} does not divide the input width {width}"
    if scheme == "int4" and g % 2:
        return (f"int4 packs two codes per byte along the input: the group ({g} inputs) must "
                "be even")
    return None


def storage_form(tensor: Any, ts: "TensorScheme") -> dict[str, Any]:
    """What `pack` stores for one tensor and its bytes in the params file (torch-free; the
    module table). Scales are counted as float16, the dtype `pack` picks unless a scale is
    outside float16's normal range (then that tensor keeps float32 scales)."""
    shape = tuple(tensor.shape)
    n = int(np.prod(shape)) if shape else 1
    if ts.scheme in ("int4", "int8") and tensor.is_matrix:
        rows, cols = shape
        g = cols if ts.group_size is None else ts.group_size
        groups = rows * (cols // g)
        codes = n if ts.scheme == "int8" else rows * -(-cols // 2)
        zero = 0 if ts.symmetric else (groups if ts.scheme == "int8" else -(-groups // 2))
        how = f"g{ts.group_size}" if ts.group_size else "per channel"
        levels = {("int4", True): "-8..7", ("int4", False): "0..15",
                  ("int8", True): "-127..127", ("int8", False): "0..255"}[ts.scheme, ts.symmetric]
        return {"label": f"packed {ts.scheme} {how}" + ("" if ts.symmetric else " + zero points"),
                "bytes": codes + 2 * groups + zero, "grid": f"{levels}, fp16 scales"}
    scheme = ts.scheme if tensor.is_matrix else "fp32"
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[scheme]
    return {"label": dtype, "bytes": n * (4 if scheme == "fp32" else 2)}


def _scales(scale: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float32)
    mag = np.abs(s[s != 0])
    if mag.size == 0 or (mag.min() >= _F16_MIN_NORMAL and mag.max() <= _F16_MAX):
        return s.astype(np.float16)
    return s


def pack(name: str, w: np.ndarray, ts: "TensorScheme") -> PackedTensor:
    """Quantize one float32 tensor with the reference quantizer and pack it (see module table)."""
    w = np.asarray(w, dtype=np.float32)
    problem = packing_problem(w.shape, ts.scheme, ts.group_size)
    if problem:
        raise ValueError(f"tvm: {name}: {problem}")
    if ts.scheme in ("fp16", "bf16"):
        if ts.scheme == "fp16":
            stored = w.astype(np.float16)
        else:
            import ml_dtypes  # numpy's bfloat16 (a dependency of TVM and onnx)

            bits = quantize(w, "bf16").codes  # the reference rounding (nearest even)
            stored = bits.view(ml_dtypes.bfloat16).reshape(w.shape)
        return PackedTensor(name, ts.scheme, tuple(w.shape), None, True, {"q": stored})
    q = quantize(w, ts.scheme, ts.group_size, ts.symmetric)
    out_f, in_f = w.shape
    codes = q.codes.reshape(out_f, in_f)
    arrays: dict[str, np.ndarray] = {}
    if ts.scheme == "int8":
        arrays["q"] = codes.astype(np.int8 if ts.symmetric else np.uint8)
    else:
        nib = (codes.astype(np.int16) + (8 if ts.symmetric else 0)).astype(np.uint8)
        arrays["q"] = _pack_nibbles(nib, nibble_block(ts.group_size or in_f))
    arrays["scale"] = _scales(q.scale)
    if not ts.symmetric:
        zero = q.zero_point.astype(np.uint8)  # [out, G]
        if ts.scheme == "int4":
            flat = zero.reshape(-1)
            zero = _pack_nibbles(np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)]))
        arrays["zero"] = zero
    return PackedTensor(name, ts.scheme, tuple(w.shape), ts.group_size, ts.symmetric, arrays)


def nibble_block(group: int) -> int:
    """Inputs per int4 block (see the module docstring): the largest power of two up to 32
    that divides the group size (a block never straddles two scales)."""
    block = 32
    while group % block:
        block //= 2
    return block


def _pack_nibbles(nib: np.ndarray, block: int = 2) -> np.ndarray:
    """Blocks of `block` along the last axis: element i -> low nibble of byte i, element
    i + block/2 -> its high nibble (block 2: element 2j low, 2j+1 high)."""
    lead, width = nib.shape[:-1], nib.shape[-1]
    b = nib.reshape(*lead, width // block, 2, block // 2)
    return (b[..., 0, :] | (b[..., 1, :] << 4)).astype(np.uint8).reshape(*lead, width // 2)


def _unpack_nibbles(packed: np.ndarray, block: int = 2) -> np.ndarray:
    """float32 nibbles, twice as many along the last axis (the graph's exact float ops)."""
    lead, width = packed.shape[:-1], packed.shape[-1]
    lo = (packed & 15).astype(np.float32)
    hi = (packed.astype(np.float32) - lo) * np.float32(0.0625)
    half = block // 2
    pairs = np.stack([lo.reshape(*lead, width // half, half),
                      hi.reshape(*lead, width // half, half)], axis=-2)
    return pairs.reshape(*lead, 2 * width)


def dequantize(p: PackedTensor) -> np.ndarray:
    """The float32 matrix the graph computes from the stored arrays (numpy, same float ops)."""
    q = p.arrays["q"]
    if p.scheme in ("fp16", "bf16"):
        return q.astype(np.float32)
    out_f, in_f = p.shape
    groups = in_f // p.group
    codes = (_unpack_nibbles(q, nibble_block(p.group)) if p.scheme == "int4"
             else q.astype(np.float32))
    codes = codes.reshape(out_f, groups, p.group)
    if p.symmetric:
        if p.scheme == "int4":
            codes = codes - np.float32(8.0)
    else:
        zero = p.arrays["zero"]
        if p.scheme == "int4":
            zero = _unpack_nibbles(zero)[: out_f * groups].reshape(out_f, groups)
        codes = codes - zero.astype(np.float32)[..., None]
    w = codes * p.arrays["scale"].astype(np.float32)[..., None]
    return w.reshape(out_f, in_f).astype(np.float32)


def _dequant_module() -> type:
    import torch
    from torch import nn

    class Dequantize(nn.Module):
        """Parametrization: the float32 weight from its packed arrays (same ops as `dequantize`)."""

        def __init__(self, packed: PackedTensor) -> None:
            super().__init__()
            self.scheme, self.symmetric = packed.scheme, packed.symmetric
            self.shape, self.group = packed.shape, packed.group
            self.stored = tuple(torch.from_numpy(np.ascontiguousarray(a))
                                if a.dtype.name != "bfloat16"
                                else torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
                                for a in packed.arrays.values())

        def right_inverse(self, weight: "torch.Tensor") -> tuple["torch.Tensor", ...]:
            return self.stored  # registration stores the packed arrays as the parameters

        @staticmethod
        def _nibbles(packed: "torch.Tensor", block: int = 2) -> "torch.Tensor":
            lead, width = packed.shape[:-1], packed.shape[-1]
            lo = (packed & 15).to(torch.float32)
            hi = (packed.to(torch.float32) - lo) * 0.0625  # exact: (high nibble * 16) / 16
            half = block // 2
            pairs = torch.stack([lo.reshape(*lead, width // half, half),
                                 hi.reshape(*lead, width // half, half)], dim=-2)
            return pairs.reshape(*lead, 2 * width)

        def forward(self, q: "torch.Tensor", *rest: "torch.Tensor") -> "torch.Tensor":
            f32 = torch.float32
            if self.scheme in ("fp16", "bf16"):
                return q.to(f32)
            out_f, in_f = self.shape
            groups = in_f // self.group
            codes = (self._nibbles(q, nibble_block(self.group)) if self.scheme == "int4"
                     else q.to(f32))
            codes = codes.reshape(out_f, groups, self.group)
            scale = rest[0]
            if self.symmetric:
                if self.scheme == "int4":
                    codes = codes - 8.0
            else:
                zero = rest[1]
                if self.scheme == "int4":
                    zero = self._nibbles(zero)[: out_f * groups].reshape(out_f, groups)
                codes = codes - zero.to(f32)[..., None]
            return (codes * scale.to(f32)[..., None]).reshape(out_f, in_f)

    return Dequantize


def apply_packing(decoder: "torch.nn.Module", packed: Mapping[str, PackedTensor]) -> None:
    """Replace each packed weight of `decoder` (a copy the caller owns) by its dequantizing
    parametrization: `module.weight` is then computed from uint8/int8/fp16 parameters."""
    from torch.nn.utils import parametrize

    dequantize_cls = _dequant_module()
    for name, p in packed.items():
        owner_name, _, attr = name.rpartition(".")
        owner = decoder.get_submodule(owner_name)
        parametrize.register_parametrization(owner, attr, dequantize_cls(p), unsafe=True)


def stored_name(param_target: str, packed: Mapping[str, PackedTensor]) -> str:
    """The params-file name of a parameter of the packed decoder.

    `layers.0.attn.q.parametrizations.weight.original1` -> `layers.0.attn.q.weight.scale`.
    """
    marker = ".parametrizations."
    if marker not in param_target:
        return param_target
    owner, _, rest = param_target.partition(marker)
    attr, _, original = rest.partition(".")
    name = f"{owner}.{attr}"
    index = int(original.removeprefix("original") or 0)
    return f"{name}.{list(packed[name].arrays)[index]}"


def precision_of(packed: Mapping[str, PackedTensor]) -> str:
    """The tolerance-table row of the artifact: its coarsest scheme, the one that bounds quality
    (int4 before int8 before bf16 before fp16), spelled with its grouping ("int4_g32",
    "int8_pc", "int4_g64_asym", "fp16"); among variants of that scheme the one holding the most
    elements. "fp32" when nothing is packed."""
    order = {"int4": 0, "int8": 1, "bf16": 2, "fp16": 3}
    if not packed:
        return "fp32"
    coarsest = min(order[p.scheme] for p in packed.values())
    by_kind: dict[str, int] = {}
    for p in packed.values():
        if order[p.scheme] != coarsest:
            continue
        kind = p.scheme
        if p.scheme in ("int4", "int8"):
            kind += "_pc" if p.group_size is None else f"_g{p.group_size}"
            kind += "" if p.symmetric else "_asym"
        by_kind[kind] = by_kind.get(kind, 0) + int(np.prod(p.shape))
    return max(sorted(by_kind), key=lambda k: by_kind[k])
