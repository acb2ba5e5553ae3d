"""Core ML weight compression: the omnic quant plan as coremltools' optimize API configs, and
the stored weights read back.

Mapping (coremltools.optimize.coreml.linear_quantize_weights, one `OpLinearQuantizerConfig` per
weight const, keyed by the const's name; nothing else is touched, `weight_threshold=0` so that
small matrices the plan quantizes are not skipped by the default 2048-element threshold):

| omnic scheme          | OpLinearQuantizerConfig                               |
|-----------------------|-------------------------------------------------------|
| int8, group_size null | dtype int8, granularity per_channel                   |
| int8, group_size g    | dtype int8, granularity per_block, block_size [1, g]  |
| int4, group_size g    | dtype int4, granularity per_block, block_size [1, g]  |
| symmetric true/false  | mode linear_symmetric / linear (zero point = offset)  |
Each becomes a `constexpr_blockwise_shift_scale` op at iOS18 (before iOS18 only per-channel
int8 exists, as `constexpr_affine_dequantize`; omnic's stateful model needs iOS18 anyway).
  ref: https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html

Core ML's quantizer is not omnic's numpy reference: linear_symmetric uses levels [-7, 7] for
int4 ([-127, 127] for int8) with scale max|w| / 7, np.round (ties to even), and works on the
weights as converted (fp16 at fp16 compute precision, scales stored fp16).
  ref: coremltools/optimize/_utils.py (get_quant_range, quantize_weight_by_dtype)
So `artifact.reference_weights` is read back from the saved package, each constexpr op
decompressed with coremltools' own `materialized_val_inference` (what the runtime computes at
load time), never recomputed from a formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from omnic.constants import Schemes

if TYPE_CHECKING:
    from omnic.quant.select import TensorScheme

QUANTIZED_SUFFIX = "_quantized"  # coremltools names the constexpr op "<const name>_quantized"
FP16_SUFFIX = "_to_fp16"  # the fp16 compute-precision pass renames weight consts "<name>_to_fp16"
COMPRESSION_OPS = ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize")


@dataclass(frozen=True)
class Compression:
    """How one tensor is compressed in the ML Program."""

    name: str  # canonical tensor name
    const: str  # MIL const op name before compression
    dtype: str  # int8 | int4
    block: int | None  # elements per scale along the input axis; None = whole row (per channel)
    symmetric: bool

    @property
    def op_name(self) -> str:
        return self.const + QUANTIZED_SUFFIX


def storage_form(tensor: Any, ts: "TensorScheme", compute_precision: str) -> dict[str, Any]:
    """What one tensor becomes in the ML Program, and its bytes in weight.bin (torch-free).

    Integer schemes become the `Compression` of `compressions` (one constexpr op: packed codes,
    a scale per block in the float type of the weights, an offset per block when asymmetric);
    everything else is a const in the compute precision's float type (fp16 compute stores
    fp32-planned weights in fp16, as the converter does).

    Returns:
        {"label", "bytes", "grid"} plus "dtype", "block", "symmetric" for compressed weights (the
        fields `artifact.quantization["compressed"]` records).
    """
    shape = tuple(tensor.shape)
    n = int(np.prod(shape)) if shape else 1
    fbytes = 2 if compute_precision == "fp16" else 4
    if ts.scheme in (Schemes.INT8, Schemes.INT4) and tensor.is_matrix:
        bits = 8 if ts.scheme == Schemes.INT8 else 4
        rows, cols = shape
        groups = rows * (1 if ts.group_size is None else cols // ts.group_size)
        nbytes = n * bits // 8 + groups * fbytes
        if not ts.symmetric:
            nbytes += -(-groups * bits // 8)
        how = "per channel" if ts.group_size is None else f"block {ts.group_size}"
        op = "constexpr_blockwise_shift_scale"
        levels = ("-7..7" if bits == 4 else "-127..127") if ts.symmetric else (
            "0..15 + offset" if bits == 4 else "0..255 + offset")
        grid = (f"coremltools linear_{'symmetric' if ts.symmetric else 'quantize'}: {levels}, "
                f"scale = max|w| / {7 if bits == 4 else 127}, round half to even, "
                f"{'fp16' if fbytes == 2 else 'fp32'} scales") if ts.symmetric else (
                f"coremltools linear: {levels}, {'fp16' if fbytes == 2 else 'fp32'} scales")
        return {"label": f"{op} int{bits} {how}", "bytes": nbytes, "grid": grid,
                "dtype": ts.scheme, "block": ts.group_size, "symmetric": ts.symmetric}
    dtype = "fp16" if fbytes == 2 else "fp32"
    return {"label": f"const {dtype}", "bytes": n * fbytes,
            "grid": "compute precision fp16" if dtype == "fp16" and ts.scheme == "fp32" else ""}


def quantized_schemes(plan: Mapping[str, "TensorScheme"]) -> dict[str, "TensorScheme"]:
    """The tensors of the plan that Core ML stores as integers (int8/int4)."""
    return {n: s for n, s in plan.items() if s.scheme in (Schemes.INT8, Schemes.INT4)}


def precision_label(plan: Mapping[str, "TensorScheme"],
                    shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Tolerance-table key: the scheme holding most matrix elements (int4_g32, int8, ...).

    Unquantized artifacts are "fp16": at fp16 compute every weight and activation is fp16, and at
    fp32 compute the KV cache is still fp16 (Core ML states are fp16 only), so the fp32 row's
    1e-4 limits do not hold for either.
    """
    counts: dict[str, int] = {}
    for name, s in quantized_schemes(plan).items():
        label = s.scheme if s.group_size is None else f"{s.scheme}_g{s.group_size}"
        if not s.symmetric:
            label += "_asym"
        counts[label] = counts.get(label, 0) + int(np.prod(shapes[name]))
    if not counts:
        return Schemes.FP16
    return max(sorted(counts), key=lambda k: counts[k])


def weight_consts(exported: Any, mil_const_names: set[str], decoder_attr: str) -> dict[str, str]:
    """Canonical tensor name -> MIL const op name, through the exported program's signature.

    torch.export lifts `<decoder_attr>.layers.0.attn.q.weight` to a placeholder (for example
    `p_model_layers_0_attn_q_weight`); coremltools names the const after the placeholder, with
    `_to_fp16` appended when it casts it for fp16 compute. Tensors folded away by MIL passes
    (e.g. a norm weight of all ones) have no const and are absent from the result.
    """
    prefix = decoder_attr + "."
    out = {}
    for placeholder, target in exported.graph_signature.inputs_to_parameters.items():
        if not target.startswith(prefix):
            continue
        name = target[len(prefix):]
        for candidate in (placeholder + FP16_SUFFIX, placeholder):
            if candidate in mil_const_names:
                out[name] = candidate
                break
    return out


def compressions(plan: Mapping[str, "TensorScheme"],
                 consts: Mapping[str, str]) -> list[Compression]:
    """One Compression per quantized tensor of the plan; raises when a const cannot be found."""
    out = []
    missing = []
    for name, s in quantized_schemes(plan).items():
        if name not in consts:
            missing.append(name)
            continue
        out.append(Compression(name, consts[name], s.scheme, s.group_size, s.symmetric))
    if missing:
        raise ValueError(f"coreml: quantized tensors without a weight const in the ML Program: "
                         f"{missing[:5]}")
    return out


def describe(items: list[Compression]) -> list[str]:
    """One log line per compression kind: what the plan becomes in the ML Program."""
    kinds: dict[str, int] = {}
    for c in items:
        how = "per channel" if c.block is None else f"block {c.block}"
        sym = "symmetric" if c.symmetric else "with zero point"
        key = f"{c.dtype} {how} {sym} -> constexpr_blockwise_shift_scale"
        kinds[key] = kinds.get(key, 0) + 1
    return [f"{k} ({n} weights)" for k, n in sorted(kinds.items())]


def optimization_config(items: list[Compression]) -> Any:
    """`OptimizationConfig` with one op_name_config per compressed const (no global config)."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    configs = {}
    for c in items:
        mode = "linear_symmetric" if c.symmetric else "linear"
        if c.block is None:
            cfg = OpLinearQuantizerConfig(mode=mode, dtype=c.dtype, granularity="per_channel",
                                          weight_threshold=0)
        else:
            cfg = OpLinearQuantizerConfig(mode=mode, dtype=c.dtype, granularity="per_block",
                                          block_size=[1, c.block], weight_threshold=0)
        configs[c.const] = cfg
    return OptimizationConfig(op_name_configs=configs)


def compress(mlmodel: Any, items: list[Compression]) -> Any:
    """The model with every planned weight compressed (coremltools' linear_quantize_weights)."""
    import coremltools as ct

    if not items:
        return mlmodel
    return ct.optimize.coreml.linear_quantize_weights(mlmodel, optimization_config(items))


# -- reading a saved package back ------------------------------------------------------------


def load_program(package: Path) -> Any:
    """The MIL program of a saved .mlpackage (weights read from its weight.bin), no Core ML load."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils as model_utils

    model = ct.models.MLModel(str(package), skip_model_load=True)
    return model_utils._convert_model_spec_to_pymil_prog(
        model, model.get_spec().specificationVersion, milproto.load
    )


def main_ops(program: Any) -> list[Any]:
    """Every operation of the program's functions, nested blocks included."""
    out = []

    def walk(block: Any) -> None:
        for op in block.operations:
            out.append(op)
            for b in op.blocks:
                walk(b)

    for fn in program.functions.values():
        walk(fn)
    return out


def stored_weights(program: Any, consts: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Canonical name -> float32 weight exactly as the program stores it (dequantized).

    `consts` maps canonical names to const op names as lowered (before compression); a
    compressed const is found under `<const>_quantized`.
    """
    by_name = {op.name: op for op in main_ops(program)}
    out = {}
    for name, const in consts.items():
        op = by_name.get(const + QUANTIZED_SUFFIX) or by_name.get(const)
        if op is None:
            raise ValueError(f"coreml: weight {name} ({const}) not found in the saved program")
        if op.op_type == "const":
            value = op.outputs[0].val
        elif op.op_type in COMPRESSION_OPS:
            value = op.materialized_val_inference()
        else:
            raise ValueError(f"coreml: weight {name} is produced by unexpected op {op.op_type}")
        out[name] = np.asarray(value, dtype=np.float32)
    return out


def compression_facts(program: Any, items: list[Compression]) -> list[str]:
    """Failures of the compressed weights against the plan (dtype, block layout); [] when fine."""
    from coremltools.converters.mil.mil import types

    by_name = {op.name: op for op in main_ops(program)}
    problems = []
    for c in items:
        op = by_name.get(c.op_name)
        if op is None or op.op_type not in COMPRESSION_OPS:
            problems.append(f"{c.name}: no compressed weight op {c.op_name}")
            continue
        if op.op_type == "constexpr_blockwise_shift_scale":
            data, scale = op.data.val, op.scale.val
            dtype = types.builtin_to_string(op.data.dtype)
        else:  # iOS16/17 constexpr_affine_dequantize: per-channel only
            data, scale = op.quantized_data.val, op.scale.val
            dtype = "int8"
        if dtype != c.dtype:
            problems.append(f"{c.name}: stored as {dtype}, plan says {c.dtype}")
        rows, cols = data.shape
        want_blocks = 1 if c.block is None else cols // c.block
        scale_shape = tuple(np.atleast_1d(scale).shape)
        got_blocks = scale_shape[1] if len(scale_shape) == 2 else 1
        if scale_shape[0] != rows or got_blocks != want_blocks:
            problems.append(f"{c.name}: scales {list(scale_shape)}, expected "
                            f"[{rows}, {want_blocks}] (block {c.block or cols})")
        has_offset = (getattr(op, "offset", None) is not None
                      or getattr(op, "zero_point", None) is not None)
        if op.op_type == "constexpr_blockwise_shift_scale" and has_offset == c.symmetric:
            problems.append(f"{c.name}: zero point {'present' if has_offset else 'absent'}, "
                            f"plan says symmetric={c.symmetric}")
    return problems
