"""Pre-flight for the ONNX target: what onnxruntime's ops cannot carry, from the spec alone.

Torch-free and backend-free, so `omnic validate` / `omnic plan` can run it anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.constants import Targets
from omnic.targets.base import Problem

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

MIN_OPSET = 18  # the torch.onnx dynamo exporter's lowest opset


def _pow2_at_least_16(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _nearest_block(n: int) -> int:
    lower = max(16, 1 << (max(n, 1).bit_length() - 1))
    upper = max(16, 1 << (max(n, 1) - 1).bit_length())
    return lower if n - lower <= upper - n else upper


def problems(spec: "ResolvedSpec") -> list[Problem]:
    """Everything in `spec` the ONNX target cannot build, each with the nearest thing it can."""
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import decoder_tensors

    out: list[Problem] = []
    t = Targets.ONNX
    opts = spec.targets.onnx
    if opts is not None and opts.opset < MIN_OPSET:
        out.append(Problem(t, "targets.onnx.opset",
                           f"opset {opts.opset} is below {MIN_OPSET}, the lowest the torch.onnx "
                           f"dynamo exporter emits; use opset {MIN_OPSET} or newer (21 recommended)"))
    if spec.quantization.kv_cache != "none":
        out.append(Problem(t, "quantization.kv_cache",
                           f"a {spec.quantization.kv_cache} KV cache is not supported by the ONNX "
                           "target (the cache is float32 graph I/O); nearest: none"))
    for name in ("vision", "audio", "sensors", "action_head"):
        if getattr(spec.modalities, name, None) is not None:
            out.append(Problem(t, f"modalities.{name}",
                               "the ONNX target lowers the text decoder only; this component "
                               "would be missing from the artifact"))

    # MatMulNBits and GatherBlockQuantized take blocks that are powers of two >= 16.
    # ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits
    tensors = {ti.name: ti for ti in decoder_tensors(spec.model)}
    reported: set[tuple[str, int]] = set()
    for name, ts in tensor_schemes(spec).items():
        if ts.scheme not in ("int4", "int8") or ts.group_size is None:
            continue
        field = ("quantization.weights.group_size" if ts.override is None
                 else f"quantization.overrides[{ts.override}].group_size")
        g, k = ts.group_size, tensors[name].shape[-1]
        if not _pow2_at_least_16(g) and (field, g) not in reported:
            reported.add((field, g))
            out.append(Problem(t, field, f"group_size {g} is not a power of two >= 16 "
                                         f"(MatMulNBits blocks); nearest: {_nearest_block(g)}"))
        elif k % g and (field, -k) not in reported:
            reported.add((field, -k))
            out.append(Problem(t, field, f"group_size {g} does not divide the input width {k} "
                                         f"of {name}; use a divisor of {k}"))
    return out
