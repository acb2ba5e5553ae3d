"""The ExecuTorch target's pre-flight rules, on the shared table of `omnic.targets.rules`
(torch-free).

`omnic validate` imports this module for specs that enable the ExecuTorch target, and
`ExecutorchTarget.check` reads the same table. How each scheme is stored is in `quant.py`.
"""

from __future__ import annotations

from omnic.constants import KVCache, Schemes, TensorNames, Targets
from omnic.targets.mixers import register_layer_kinds
from omnic.targets.rules import Context, Finding, register

_ET = "https://github.com/pytorch/executorch/blob/main/"

XNNPACK_BLOCK = 32  # qb4w group sizes are multiples of 32


def backend(ctx: Context) -> str:
    et = ctx.spec.targets.executorch
    return et.backend if et is not None else "xnnpack"


@register(Targets.EXECUTORCH, "executorch.xnnpack_no_bf16", "XNNPACK has no bf16 kernels",
          "https://github.com/pytorch/executorch/tree/main/backends/xnnpack")
def _bf16(ctx: Context):
    backend = ctx.spec.targets.executorch.backend
    if backend in ("xnnpack", "coreml"):
        for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.BF16)}):
            yield Finding(path + ("scheme",),
                          f"executorch backend {backend} cannot run bf16 weights; use fp16")


@register(Targets.EXECUTORCH, "executorch.xnnpack_int4_symmetric",
          "XNNPACK blockwise int4 weights (torchao 8da4w) carry scales only, no zero points",
          "https://github.com/pytorch/ao/blob/main/torchao/quantization/GPTQ.py")
def _int4_asym(ctx: Context):
    if ctx.spec.targets.executorch.backend != "xnnpack":
        return
    for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.INT4) if not s.symmetric}):
        yield Finding(path + ("symmetric",),
                      "executorch xnnpack int4 weights are symmetric; set symmetric: true")


def _linear_uses(ctx: Context, scheme: str):
    """(tensor, scheme) pairs a quantized linear kernel must run: every int matrix but an untied
    embedding (that one is only looked up, by a kernel that takes any group and zero points)."""
    tied = ctx.spec.model.tie_embeddings
    return [(t, s) for t, s in ctx.using(scheme) if t.name != TensorNames.EMBED or tied]


@register(Targets.EXECUTORCH, "executorch.xnnpack_int_symmetric",
          "XNNPACK's quantized linears (qd8-f32-qc8w / qb4w) take weights without zero points",
          _ET + "backends/xnnpack/operators/quant_params.py")
def _int8_asym(ctx: Context):
    if backend(ctx) != "xnnpack":
        return
    # int4 is covered by executorch.xnnpack_int4_symmetric (above)
    asym = [s for _, s in _linear_uses(ctx, Schemes.INT8) if not s.symmetric]
    for path in sorted({ctx.source(s) for s in asym}):
        yield Finding(path + ("symmetric",),
                      "XNNPACK's int8 linear weights have no zero point; nearest: symmetric: true")


@register(Targets.EXECUTORCH, "executorch.xnnpack_int8_per_channel",
          "XNNPACK has group-wise weights for 4 bits only; int8 weights are per channel",
          _ET + "backends/xnnpack/operators/node_visitor.py")
def _int8_groups(ctx: Context):
    if backend(ctx) != "xnnpack":
        return
    pairs = [(t, s) for t, s in _linear_uses(ctx, Schemes.INT8) if s.group_size is not None]
    for path in sorted({ctx.source(s) for _, s in pairs}):
        yield Finding(path + ("group_size",),
                      "XNNPACK stores int8 linear weights per channel (group-wise blocks are "
                      "4-bit only); nearest: group_size null, or int4")


@register(Targets.EXECUTORCH, "executorch.xnnpack_block_32",
          "XNNPACK's 4-bit block kernels need group sizes that are multiples of 32",
          _ET + "backends/xnnpack/operators/node_visitor.py")
def _int4_block(ctx: Context):
    if backend(ctx) != "xnnpack":
        return
    pairs = [(t, s) for t, s in _linear_uses(ctx, Schemes.INT4) if s.group_size % XNNPACK_BLOCK]
    for path in sorted({ctx.source(s) for _, s in pairs}):
        g = next(s.group_size for _, s in pairs if ctx.source(s) == path)
        nearest = max(XNNPACK_BLOCK, round(g / XNNPACK_BLOCK) * XNNPACK_BLOCK)
        yield Finding(path + ("group_size",),
                      f"XNNPACK's 4-bit block kernels need a group_size that is a multiple of 32, "
                      f"got {g}; nearest: {nearest}")


@register(Targets.EXECUTORCH, "executorch.one_float_type",
          "an XNNPACK program computes in one float type; fp16 is the whole model or nothing",
          _ET + "extension/llm/export/builder.py")
def _fp16_mixed(ctx: Context):
    if backend(ctx) == "portable":
        return
    fp16 = ctx.using(Schemes.FP16)
    others = [(t, ctx.schemes[t.name]) for t in ctx.tensors
              if t.is_matrix and ctx.schemes[t.name].scheme != Schemes.FP16]
    if fp16 and others:
        kinds = sorted({s.scheme for _, s in others})
        path = sorted({ctx.source(s) for _, s in fp16})[0]
        yield Finding(path + ("scheme",),
                      f"the ExecuTorch program computes the whole model in one float type: fp16 "
                      f"matrices mixed with {kinds} cannot be stored; nearest: fp16 for every "
                      "matrix, or no fp16")


@register(Targets.EXECUTORCH, "executorch.kv_cache",
          "omnic's ExecuTorch program keeps the KV cache in the model's float type",
          _ET + "extension/llm/custom_ops/custom_ops.py")
def _kv_cache(ctx: Context):
    if ctx.spec.quantization.kv_cache != KVCache.NONE:
        yield Finding(("quantization", "kv_cache"),
                      f"a {ctx.spec.quantization.kv_cache} KV cache needs ExecuTorch's quantized "
                      "SDPA custom op, which omnic's attention does not use; nearest: none")


@register(Targets.EXECUTORCH, "executorch.coreml_float_only",
          "omnic's Core ML delegate variant stores fp32/fp16 weights",
          _ET + "backends/apple/coreml/partition/coreml_partitioner.py")
def _coreml_ints(ctx: Context):
    if backend(ctx) != "coreml":
        return
    ints = ctx.using(Schemes.INT4) + ctx.using(Schemes.INT8)
    for path in sorted({ctx.source(s) for _, s in ints}):
        yield Finding(path + ("scheme",),
                      "the ExecuTorch Core ML variant stores float weights only (Core ML "
                      "compression is the coreml target's); nearest: backend xnnpack, or fp16")


@register(Targets.EXECUTORCH, "executorch.portable_float_linears",
          "the portable kernels have no quantized linear (only quantized embedding lookups)",
          _ET + "kernels/quantized/quantized.yaml")
def _portable_ints(ctx: Context):
    if backend(ctx) != "portable":
        return
    pairs = _linear_uses(ctx, Schemes.INT4) + _linear_uses(ctx, Schemes.INT8)
    for path in sorted({ctx.source(s) for _, s in pairs}):
        yield Finding(path + ("scheme",),
                      "the portable backend has no quantized linear kernels; nearest: backend "
                      "xnnpack, or quantize only the (untied) embedding")


register_layer_kinds(Targets.EXECUTORCH)  # the layer kinds mixers.CARRIED lists
