"""The Core ML target's pre-flight rules, on the shared table of `omnic.targets.rules` (torch-free).

int4 and int8-per-block weights need iOS18, no bf16, fp16-only KV states, the device's OS
version, fp32 never on the Neural Engine; the stateful KV cache itself needs iOS18, groups must
tile the input width, and fp16 storage needs fp16 compute. Importing this module registers them
(`omnic validate` and `CoremlTarget.check` do).
"""

from __future__ import annotations

from omnic.constants import Schemes, Targets
from omnic.targets.mixers import register_layer_kinds
from omnic.targets.rules import Context, Finding, first, register

IOS18 = ("iOS18", "macOS15")
OS_VERSION = {"iOS16": ("ios", 16), "iOS17": ("ios", 17), "iOS18": ("ios", 18),
              "macOS14": ("macos", 14), "macOS15": ("macos", 15)}


@register(Targets.COREML, "coreml.int4_needs_ios18",
          "int4 weights are per-block linear quantization, available from iOS18/macOS15",
          "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html")
def _int4(ctx: Context):
    target = ctx.spec.targets.coreml.deployment_target
    int4 = ctx.using(Schemes.INT4)
    if int4 and target not in IOS18:
        yield Finding(("targets", "coreml", "deployment_target"),
                      f"int4 per-block weights ({first(int4)}) need deployment_target iOS18 or "
                      f"macOS15, got {target}")


@register(Targets.COREML, "coreml.int8_blocks_need_ios18",
          "int8 with a group_size is per-block quantization: iOS18/macOS15 (per-channel: iOS16)",
          "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html")
def _int8_blocks(ctx: Context):
    target = ctx.spec.targets.coreml.deployment_target
    blocks = [(t, s) for t, s in ctx.using(Schemes.INT8) if s.group_size is not None]
    if blocks and target not in IOS18:
        yield Finding(("targets", "coreml", "deployment_target"),
                      f"int8 per-block weights ({first(blocks)}) need deployment_target iOS18 or "
                      f"macOS15, got {target}; use group_size null (per channel) or iOS18")


@register(Targets.COREML, "coreml.no_bf16", "Core ML stores weights as fp16 or fp32, never bf16",
          "https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html")
def _bf16(ctx: Context):
    for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.BF16)}):
        yield Finding(path + ("scheme",), "coreml cannot store bf16 weights; use fp16")


@register(Targets.COREML, "coreml.kv_fp16",
          "the stateful KV cache is a Core ML state, and states are fp16 only",
          "https://apple.github.io/coremltools/docs-guides/source/stateful-models.html")
def _kv(ctx: Context):
    if ctx.spec.quantization.kv_cache == "int8":
        yield Finding(("quantization", "kv_cache"),
                      "coreml keeps the KV cache in fp16 states; int8 is not supported")


@register(Targets.COREML, "coreml.device",
          "the deployment target must be an OS the device runs",
          "https://developer.apple.com/documentation/coreml")
def _device(ctx: Context):
    device = ctx.spec.device
    os_name, version = OS_VERSION[ctx.spec.targets.coreml.deployment_target]
    if device.os not in ("ios", "macos"):
        yield Finding(("targets", "coreml"),
                      f"device {device.name} runs {device.os}: the Core ML artifact is built and "
                      "checked but cannot be deployed to it", "warning")
    elif device.os == os_name and device.os_version and device.os_version.split(".")[0].isdigit():
        if int(device.os_version.split(".")[0]) < version:
            yield Finding(("targets", "coreml", "deployment_target"),
                          f"device {device.name} runs {device.os} {device.os_version}, older than "
                          f"deployment_target {ctx.spec.targets.coreml.deployment_target}")


@register(Targets.COREML, "coreml.ane_fp16",
          "the Neural Engine computes in fp16; fp32 precision runs on CPU/GPU only",
          "https://apple.github.io/coremltools/docs-guides/source/typed-execution.html")
def _ane(ctx: Context):
    c = ctx.spec.targets.coreml
    if c.compute_units == "cpu_and_ne" and c.compute_precision == "fp32":
        yield Finding(("targets", "coreml", "compute_precision"),
                      "fp32 compute never runs on the Neural Engine (it is fp16); cpu_and_ne "
                      "will fall back to the CPU", "warning")


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
                      f"group_size ({first(names)} are not)")


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


register_layer_kinds(Targets.COREML)  # the layer kinds mixers.CARRIED lists
