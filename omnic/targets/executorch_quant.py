"""omnic quantization schemes in ExecuTorch's native forms (torchao tensors lowered to XNNPACK).

One table decides, per tensor of the quant plan, what the .pte stores and which kernel runs it:

| plan scheme                  | used as            | ExecuTorch form                      | kernel                          |
|------------------------------|--------------------|--------------------------------------|---------------------------------|
| int4 symmetric, group g      | linear             | 8da4w, group g (int8 dynamic acts)   | XNNPACK qd8-f32-qb4w gemm       |
| int8 symmetric, per channel  | linear             | 8da8w, per channel                   | XNNPACK qd8-f32-qc8w gemm       |
| int8 any, int4 any           | embedding lookup   | weight-only, torchao's embedding     | quantized_decomposed::embedding_byte / embedding_4bit |
| fp16 (every matrix)          | whole model        | fp16 weights and activations         | XNNPACK f16 kernels             |

The integer codes and scales are omnic's own (`omnic.quant.reference.quantize`), placed into
torchao's `IntxUnpackedToInt8Tensor` directly instead of letting torchao choose its parameters,
so "int4 group 32" stores the same numbers here as in every other target. XNNPACK keeps
group-wise scales in bfloat16, so those scales are rounded to bf16 before lowering and the
reference weights use the rounded scales.
  ref: executorch/backends/xnnpack/operators/node_visitor.py (`scale.to(torch.bfloat16)` for
  per_channel_group weights)
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

from omnic.constants import Roles, Schemes, TensorNames

if TYPE_CHECKING:
    import torch

    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec

# Native forms, as written into artifact.quantization and the precision key.
FORM_FP32 = "fp32"
FORM_FP16 = "fp16"
FORM_8DA4W = "8da4w_g{g}"
FORM_8DA8W = "8da8w"
FORM_EMBED = "embedding_{bits}bit{group}"


@dataclass(frozen=True)
class PlanProblem:
    """A tensor scheme the ExecuTorch backend cannot store, with the nearest one it can."""

    field: str
    message: str


@dataclass
class QuantResult:
    """What `quantize_decoder` did to the decoder."""

    precision: str  # row key of the tolerance table
    dtype: str  # compute dtype of the exported model: "float32" or "float16"
    forms: dict[str, str] = field(default_factory=dict)  # tensor name -> native form (non-fp32 only)
    reference_weights: dict[str, np.ndarray] | None = None
    dynamic_activations: bool = False


def _is_embedding(name: str) -> bool:
    return name == TensorNames.EMBED


def plan_problems(spec: "ResolvedSpec", plan: Mapping[str, "TensorScheme"] | None = None) -> list[PlanProblem]:
    """Schemes of `plan` (default: the spec's quant plan) that ExecuTorch cannot store.

    Torch-free: `check()` calls it before anything is built.
    """
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import decoder_tensors

    plan = plan if plan is not None else tensor_schemes(spec)
    roles = {t.name: t.role for t in decoder_tensors(spec.model)}
    out: list[PlanProblem] = []
    if spec.quantization.kv_cache != "none":
        out.append(PlanProblem(
            "quantization.kv_cache",
            f"an {spec.quantization.kv_cache} KV cache needs ExecuTorch's quantized SDPA custom op, "
            "which omnic's attention does not use; nearest: kv_cache: none",
        ))
    schemes = {ts.scheme for name, ts in plan.items() if name in roles}
    floats = schemes & {Schemes.FP16, Schemes.BF16}
    if Schemes.BF16 in schemes:
        out.append(PlanProblem(
            "quantization", "bf16 is off by default in XNNPACK (fp32 fallback on the portable "
            "kernels); nearest: fp16",
        ))
    elif floats and len(schemes - {Schemes.FP32}) > 1:
        out.append(PlanProblem(
            "quantization", "XNNPACK computes a whole model in one float type: fp16 tensors mixed "
            f"with {sorted(schemes - {Schemes.FP16, Schemes.FP32})} cannot be stored; nearest: "
            "fp16 for every matrix, or no fp16 override",
        ))
    elif Schemes.FP16 in schemes and any(
        ts.scheme == Schemes.FP32 for n, ts in plan.items() if n in roles and roles[n] != Roles.NORM
        and ts.override is not None
    ):
        out.append(PlanProblem(
            "quantization.overrides", "fp32 overrides inside an fp16 model cannot be stored; "
            "XNNPACK computes the whole model in fp16",
        ))
    tied = spec.model.tie_embeddings
    for name, ts in plan.items():
        if ts.scheme not in (Schemes.INT4, Schemes.INT8):
            continue
        where = "quantization.weights" if ts.override is None else f"quantization.overrides[{ts.override}]"
        embedding = _is_embedding(name)
        if embedding and not tied:
            continue  # embedding_byte / embedding_4bit take every group size, with zero points
        used = "the tied embedding, also the lm_head," if embedding else name
        if not ts.symmetric:
            out.append(PlanProblem(
                where, f"{used}: XNNPACK's quantized linear kernels have no weight zero point; "
                "nearest: symmetric: true",
            ))
        elif ts.scheme == Schemes.INT4 and ts.group_size % 32:
            # ref: executorch/backends/xnnpack/operators/node_visitor.py ("group_size to be a
            # multiple of 32")
            out.append(PlanProblem(
                where, f"{used}: XNNPACK's 4-bit block kernels need a group_size that is a "
                f"multiple of 32, not {ts.group_size}; nearest: group_size 32",
            ))
        elif ts.scheme == Schemes.INT8 and ts.group_size is not None:
            out.append(PlanProblem(
                where, f"{used}: XNNPACK has group-wise weights only for 4 bits (int8 is per "
                "channel); nearest: int8 with group_size null, or int4",
            ))
    # one message per override / the default is enough
    unique: dict[tuple[str, str], PlanProblem] = {}
    for p in out:
        key = (p.field, p.message.split(":", 1)[-1])
        unique.setdefault(key, p)
    return list(unique.values())


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


def _bf16(x: np.ndarray) -> np.ndarray:
    from omnic.quant.reference import _bf16_bits

    return (_bf16_bits(x).astype(np.uint32) << 16).view(np.float32).reshape(x.shape)


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
        ValueError: a scheme `plan_problems` rejects.
    """
    import torch

    from omnic.quant.reference import quantize

    params = dict(decoder.named_parameters())
    schemes = {ts.scheme for name, ts in plan.items() if name in params}
    if schemes - {Schemes.FP32, Schemes.INT4, Schemes.INT8, Schemes.FP16}:
        raise ValueError(f"ExecuTorch cannot store {sorted(schemes)}; nearest: fp16")
    if Schemes.FP16 in schemes:
        if schemes & {Schemes.INT4, Schemes.INT8}:
            raise ValueError("fp16 cannot be mixed with int schemes on XNNPACK")
        decoder.to(torch.float16)
        matrices = {n for n, ts in plan.items() if ts.scheme == Schemes.FP16}
        ref = {n: p.detach().float().numpy().copy() for n, p in decoder.named_parameters()}
        return QuantResult("fp16", "float16", {n: FORM_FP16 for n in sorted(matrices)}, ref)

    result = QuantResult("fp32", "float32")
    ref: dict[str, np.ndarray] = {}
    groups: set[int] = set()
    tied = getattr(decoder.config, "tie_embeddings", False)
    for name, ts in plan.items():
        if ts.scheme not in (Schemes.INT4, Schemes.INT8) or name not in params:
            continue
        param = params[name]
        w = param.detach().float().cpu().numpy()
        q = quantize(w, ts.scheme, ts.group_size, ts.symmetric)
        bits = 4 if ts.scheme == Schemes.INT4 else 8
        codes, zp = _signed(q)
        scale = q.scale.reshape(w.shape[0], -1).astype(np.float32)
        embedding = _is_embedding(name)
        linear = not embedding or tied
        if linear and (not ts.symmetric or (bits == 8 and ts.group_size is not None)):
            raise ValueError(f"{name}: {ts} has no XNNPACK linear kernel (see check())")
        grouped = bits == 4  # XNNPACK's per-channel-group (qb4w) path; int8 is per channel
        if linear and grouped:
            scale = _bf16(scale)  # what XNNPACK keeps, see the module docstring
        block = _group_blocks(w.shape, ts.group_size)
        tensor = _intx_tensor(codes, scale, zp, bits, block, dynamic=linear)
        # The stored values, dequantized the way both kernels do it: (q - z) * s.
        stored = (codes.astype(np.float32).reshape(w.shape[0], -1, block[1])
                  - zp.astype(np.float32)[..., None]) * scale[..., None]
        ref[name] = stored.reshape(w.shape).astype(np.float32)
        _assign(decoder, name, torch.nn.Parameter(tensor, requires_grad=False))
        if embedding:
            group = "" if ts.group_size is None else f"_g{ts.group_size}"
            form = FORM_EMBED.format(bits=bits, group=group)
            if tied:
                form += "+" + (FORM_8DA4W.format(g=block[1]) if bits == 4 else FORM_8DA8W)
        elif bits == 4:
            form = FORM_8DA4W.format(g=block[1])
        else:
            form = FORM_8DA8W
        if linear:
            result.dynamic_activations = True
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
            result.precision = "int8_embedding" if all(
                f.startswith("embedding_8") for f in result.forms.values()
            ) else "int_embedding"
    return result


def _assign(module: "torch.nn.Module", name: str, value: "torch.nn.Parameter") -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    setattr(owner, attr, value)
