"""Core ML pre-flight rules beyond the shared table in `omnic.spec.capabilities` (torch-free).

The shared table already has: int4 and int8-per-block need iOS18, no bf16, fp16-only KV states,
the device's OS version, fp32 never on the Neural Engine. Registered here, in the same table:
the stateful KV cache itself needs iOS18, groups must tile the input width, and fp16 storage
needs fp16 compute. Importing this module registers them (`CoremlTarget.check` does).
"""

from __future__ import annotations

from omnic.constants import Schemes, Targets
from omnic.spec.capabilities import Context, Finding, _first, register

IOS18 = ("iOS18", "macOS15")


@register(Targets.COREML, "coreml.state_needs_ios18",
          "the KV cache is Core ML state (ct.StateType), available from iOS18/macOS15",
          "https://apple.github.io/coremltools/docs-guides/source/stateful-models.html")
def _state(ctx: Context):
    target = ctx.spec.targets.coreml.deployment_target
    if target not in IOS18:
        yield Finding(("targets", "coreml", "deployment_target"),
                      f"the stateful KV cache (Core ML states) needs iOS18 or macOS15, got "
                      f"{target}; omnic builds no stateless (KV-as-I/O) Core ML variant")


@register(Targets.COREML, "coreml.block_divides",
          "a per-block quantized weight's input width must be a multiple of the block",
          "https://apple.github.io/coremltools/source/coremltools.optimize.coreml.config.html")
def _blocks(ctx: Context):
    # coremltools skips such a weight with a log warning and leaves it fp16: the plan would be
    # silently broken, so it is refused here. ref: coremltools/optimize/_utils.py
    # (compute_qparams_by_dtype: "Unable to perform structured quantization")
    odd = [(t, s) for t, s in ctx.using(Schemes.INT4) + ctx.using(Schemes.INT8)
           if s.group_size is not None and t.shape[-1] % s.group_size]
    for path in sorted({ctx.source(s) for _, s in odd}):
        names = [(t, s) for t, s in odd if ctx.source(s) == path]
        yield Finding(path + ("group_size",),
                      f"coreml per-block quantization needs the input width to be a multiple of "
                      f"group_size ({_first(names)} are not)")


@register(Targets.COREML, "coreml.fp16_weights_need_fp16_compute",
          "an ML Program stores float weights in its compute precision",
          "https://apple.github.io/coremltools/docs-guides/source/typed-execution.html")
def _fp16_storage(ctx: Context):
    if ctx.spec.targets.coreml.compute_precision != "fp32":
        return
    for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.FP16)}):
        yield Finding(path + ("scheme",),
                      "coreml at compute_precision fp32 stores float weights as fp32; fp16 "
                      "weights need targets.coreml.compute_precision fp16 (or scheme fp32)")
