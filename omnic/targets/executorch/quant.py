"""omnic quantization schemes in ExecuTorch's native forms (torchao tensors lowered to XNNPACK).

One table decides, per tensor of the quant plan, what the .pte stores and which kernel runs it:

| plan scheme                 | used as   | ExecuTorch form               | kernel                 |
|-----------------------------|-----------|-------------------------------|------------------------|
| int4 symmetric, group g     | linear    | 8da4w g (int8 dynamic acts)   | XNNPACK qd8-f32-qb4w   |
| int8 symmetric, per channel | linear    | 8da8w, per channel            | XNNPACK qd8-f32-qc8w   |
| int8 / int4, any group      | embedding | torchao weight-only embedding | embedding_byte / _4bit |
| fp16 (every matrix)         | all       | fp16 weights, acts, KV cache  | XNNPACK f16 kernels    |
| bf16 (portable backend)     | all       | bf16 weights, acts, KV cache  | portable kernels       |

(embedding_byte / embedding_4bit are `quantized_decomposed::` kernels of the runtime, produced
from torchao's dequantize + embedding by `to_executorch`'s quant fusion.)

The integer codes are placed into torchao's `IntxUnpackedToInt8Tensor` directly instead of
letting torchao choose its parameters (torchao's `hqq_scale_only` default is data-dependent
optimisation). int8 and every embedding store omnic's own codes and scales
(`omnic.quant.reference.quantize`), so they hold the same numbers as the other targets. int4
linears cannot: XNNPACK takes only positive, normal block scales and keeps them in bfloat16,
while omnic's int4 puts each block's largest-magnitude weight m on code -8 (a negative scale
when m > 0). Those blocks use s = m / 7 instead (m still exact, on code +7); every block scale
is rounded to bf16 and the codes are chosen for the rounded scale (`_xnnpack_int4`). The
reference weights are always the stored codes times the stored scales.
  ref: executorch/backends/xnnpack/operators/node_visitor.py (`scale.to(torch.bfloat16)` for
  per_channel_group weights); XNNPACK's xnn_define_blockwise_quantized_tensor_value rejects
  non-positive scales (a .pte built with them fails to load: "Failed to define tensor").
XNNPACK has no fp32-activation kernel for group-wise int4 or a weight-only int8 linear it will
take from a dequantize node (its partitioner wants a dequantized activation), so linears
quantize their input activations per token at run time (8da = "8-bit dynamic activations", as
export_llm's `-qmode 8da4w`); the reference weights are exact, the activations are not, and the
precision key says so (`8da4w_g32`).
  ref: executorch/extension/llm/export/quantize.py (`_make_linear_config`)

Embedding lookups are exact (a table lookup times a scale). A tied embedding that is also the
lm_head is used both ways: looked up exactly and multiplied as 8da8w.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from omnic.constants import Schemes, TensorNames
from omnic.quant.activations import XNNPACK_QD8, ActivationQuant

if TYPE_CHECKING:
    import torch

    from omnic.quant.select import TensorScheme

# Native forms, as written into artifact.quantization and the precision key.
FORM_8DA4W = "8da4w_g{g}"
FORM_8DA8W = "8da8w"
FORM_EMBED = "embedding_{bits}bit{group}"


@dataclass
class QuantResult:
    """What `quantize_decoder` did to the decoder."""

    precision: str  # row key of the tolerance table
    dtype: str  # compute dtype of the exported model: "float32", "float16" or "bfloat16"
    forms: dict[str, str] = field(default_factory=dict)  # name -> native form, non-fp32 only
    reference_weights: dict[str, np.ndarray] | None = None
    # linears whose input XNNPACK rounds to int8 per token at run time (8da)
    rounding: dict[str, ActivationQuant] = field(default_factory=dict)

    @property
    def dynamic_activations(self) -> bool:
        return bool(self.rounding)


def _is_embedding(name: str) -> bool:
    return name == TensorNames.EMBED


def form_of(name: str, ts: "TensorScheme", tied: bool, width: int) -> str | None:
    """The native form of one int8/int4-planned tensor (the module table), None for the rest.

    Torch-free: `omnic plan --explain-quant` and the memory plan read the same answer that
    `quantize_decoder` records in `artifact.quantization["forms"]`.

    Args:
        name: canonical tensor name.
        ts: its TensorScheme.
        tied: the embedding is also the lm_head.
        width: the input width (shape[-1]), the group of a per-channel int8 linear.
    """
    if ts.scheme not in (Schemes.INT4, Schemes.INT8):
        return None
    bits = 4 if ts.scheme == Schemes.INT4 else 8
    g = width if ts.group_size is None else ts.group_size
    linear = FORM_8DA4W.format(g=g) if bits == 4 else FORM_8DA8W
    if not _is_embedding(name):
        return linear
    group = "" if ts.group_size is None else f"_g{ts.group_size}"
    form = FORM_EMBED.format(bits=bits, group=group)
    return f"{form}+{linear}" if tied else form


def _group_blocks(shape: tuple[int, ...], group_size: int | None) -> tuple[int, int]:
    return (1, shape[1] if group_size is None else group_size)


def _intx_tensor(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int,
                 block: tuple[int, int], dynamic: bool) -> "torch.Tensor":
    import torch
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization as Act,
    )

    return IntxUnpackedToInt8Tensor(
        qdata=torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int8)),
        scale=torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)),
        zero_point=torch.from_numpy(np.ascontiguousarray(zero_point, dtype=np.int8)),
        target_dtype=torch.int4 if bits == 4 else torch.int8,
        block_size=block,
        dtype=torch.float32,
        activation_quantization=Act.INT8_ASYM_PER_TOKEN if dynamic else None,
    )


def _xnnpack_int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes int8 [out, in] in [-8, 7] and positive bf16 scales [out, in/group] for XNNPACK.

    The grid is `omnic.quant.grids.xnnpack` (extreme on -8 when negative, on +7 when positive,
    scales rounded to bf16 before the codes are chosen; tested there against torchao).
    """
    from omnic.quant.grids import xnnpack

    out_f, in_f = w.shape
    grid = xnnpack(w, "int4", group, True)
    return grid.codes.reshape(out_f, in_f), grid.scale


def _signed(q: Any) -> tuple[np.ndarray, np.ndarray]:
    """omnic codes and zero points as torchao's signed int8 storage (same dequantized values).

    Asymmetric codes are unsigned (0..15 or 0..255); shifting code and zero point by the same
    offset (8 or 128) keeps (q - z) * s unchanged.
    """
    out_f = q.shape[0]
    codes = q.codes.reshape(out_f, -1).astype(np.int16)
    groups = q.scale.reshape(out_f, -1)
    if q.zero_point is None:
        return codes.astype(np.int8), np.zeros(groups.shape, np.int8)
    shift = 8 if q.scheme == Schemes.INT4 else 128
    zp = q.zero_point.reshape(out_f, -1).astype(np.int16) - shift
    return (codes - shift).astype(np.int8), zp.astype(np.int8)


def quantize_decoder(decoder: "torch.nn.Module", plan: Mapping[str, "TensorScheme"]) -> QuantResult:
    """Swap the decoder's weights for their ExecuTorch forms, in place.

    Args:
        decoder: an omnic `Decoder` the caller owns (a copy: this mutates it).
        plan: tensor name -> TensorScheme, for every decoder tensor.

    Returns:
        The precision key, the compute dtype, each quantized tensor's form and the reference
        weights (the stored weights, dequantized), or None when every tensor stays fp32.

    Raises:
        ValueError: a scheme the pre-flight rules reject (`rules.py`).
    """
    import torch

    from omnic.quant.reference import quantize

    params = dict(decoder.named_parameters())
    schemes = {ts.scheme for name, ts in plan.items() if name in params}
    floats = schemes & {Schemes.FP16, Schemes.BF16}
    if floats:
        # One float type for the whole program (export_llm's dtype_override): weights,
        # activations and the KV cache. The rules reject mixing it with anything else.
        (scheme,) = floats
        if schemes - {scheme, Schemes.FP32}:
            raise ValueError(f"{scheme} cannot be mixed with {sorted(schemes - floats)} "
                             "(see check())")
        dtype = torch.float16 if scheme == Schemes.FP16 else torch.bfloat16
        decoder.to(dtype)
        ref = {n: p.detach().float().numpy().copy() for n, p in decoder.named_parameters()}
        forms = {n: scheme for n, ts in plan.items() if ts.scheme == scheme}
        return QuantResult(scheme, str(dtype).removeprefix("torch."), forms, ref)

    result = QuantResult("fp32", "float32")
    ref: dict[str, np.ndarray] = {}
    groups: set[int] = set()
    tied = getattr(decoder.config, "tie_embeddings", False)
    for name, ts in plan.items():
        if ts.scheme not in (Schemes.INT4, Schemes.INT8) or name not in params:
            continue
        param = params[name]
        w = param.detach().float().cpu().numpy()
        bits = 4 if ts.scheme == Schemes.INT4 else 8
        embedding = _is_embedding(name)
        linear = not embedding or tied
        if linear and (not ts.symmetric or (bits == 8 and ts.group_size is not None)):
            raise ValueError(f"{name}: {ts} has no XNNPACK linear kernel (see check())")
        block = _group_blocks(w.shape, ts.group_size)
        if linear and bits == 4:
            codes, scale = _xnnpack_int4(w, block[1])
            zp = np.zeros(scale.shape, np.int8)
        else:
            # omnic's own codes (int8 symmetric: s = max|w| / 127 > 0; embeddings take any
            # scale sign and zero points). XNNPACK rejects a zero scale: all-zero rows get 1.
            q = quantize(w, ts.scheme, ts.group_size, ts.symmetric)
            codes, zp = _signed(q)
            scale = q.scale.reshape(w.shape[0], -1).astype(np.float32)
            if linear:
                scale = np.where(scale == 0, np.float32(1.0), scale)
        tensor = _intx_tensor(codes, scale, zp, bits, block, dynamic=linear)
        # The stored values, dequantized the way both kernels do it: (q - z) * s.
        stored = (codes.astype(np.float32).reshape(w.shape[0], -1, block[1])
                  - zp.astype(np.float32)[..., None]) * scale[..., None]
        ref[name] = stored.reshape(w.shape).astype(np.float32)
        _assign(decoder, name, torch.nn.Parameter(tensor, requires_grad=False))
        form = form_of(name, ts, tied, w.shape[1])
        if linear:
            result.rounding[name] = XNNPACK_QD8
            if bits == 4:
                groups.add(block[1])
        result.forms[name] = form
    if ref:
        result.reference_weights = ref
        if groups:
            result.precision = "8da4w_g" + "_g".join(str(g) for g in sorted(groups))
        elif result.dynamic_activations:
            result.precision = FORM_8DA8W
        else:
            # only the (untied) embedding is quantized, and looked up exactly
            bits = "8" if all(f.startswith("embedding_8") for f in result.forms.values()) else "4"
            result.precision = f"int{bits}_embedding"
    return result


def _assign(module: "torch.nn.Module", name: str, value: "torch.nn.Parameter") -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    setattr(owner, attr, value)
