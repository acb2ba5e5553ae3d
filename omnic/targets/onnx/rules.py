"""The ONNX target's pre-flight rules, on the shared table of `omnic.targets.rules` (torch-free).

`omnic validate` imports this module for specs that enable the ONNX target, and
`OnnxTarget.check` reads the same table, so both report the same problems.
"""

from __future__ import annotations

from omnic.constants import KVCache, Schemes, Targets
from omnic.targets.mixers import register_layer_kinds
from omnic.targets.rules import Context, Finding, register

MIN_OPSET = 18  # the lowest opset the torch.onnx dynamo exporter emits
# onnxruntime 1.31's CPU GroupQueryAttention: "head_size must be a multiple of 8"; with
# do_rotary, "head_size shall be a multiple of 16" and "cos_cache dimension 1 must be <=
# head_size / 2 and a multiple of 8" (rotary dims a multiple of 16).
HEAD_MULTIPLE, ROTARY_HEAD_MULTIPLE, ROTARY_MULTIPLE = 8, 16, 16
# onnxruntime-genai's windowed KV cache on CPU: window + 16 positions per sliding layer
# ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/models/windowed_kv_cache.cpp
GENAI_WINDOW_SLACK = 16


def window_caches(spec) -> bool:
    """Whether the ONNX artifact gives its sliding layers genai's windowed cache (the
    `onnx::window_caches` pass): fusions on, every layer within GroupQueryAttention's head
    limits (so every layer fuses), one window size shorter than the context."""
    m = spec.model
    opts = spec.targets.onnx
    windows = {r.window for r in m.table if r.window is not None and r.window < m.context_length}
    if (opts is not None and not opts.fusions) or len(windows) != 1:
        return False
    hd = m.dim_per_head
    for row in m.table:
        if row.rope is None:
            if hd % HEAD_MULTIPLE:
                return False
        elif hd % ROTARY_HEAD_MULTIPLE or row.rope.dims % ROTARY_MULTIPLE:
            return False
    return True
MAX_BLOCK = 256  # onnxruntime's CPU MatMulNBits kernels take blocks of 16 to 256


@register(Targets.ONNX, "onnx.block_size",
          "MatMulNBits block_size is a power of two, at least 16",
          "https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md"
          "#com.microsoft.MatMulNBits")
def _blocks(ctx: Context):
    seen = set()
    for scheme in (Schemes.INT4, Schemes.INT8):
        for _, s in ctx.using(scheme):
            g = s.group_size
            if g is None or (g >= 16 and g & (g - 1) == 0) or ctx.source(s) in seen:
                continue
            seen.add(ctx.source(s))
            nearest = max(16, min((1 << (g.bit_length() - 1), 1 << g.bit_length()),
                                  key=lambda b: (abs(b - g), b)))
            yield Finding(ctx.source(s) + ("group_size",),
                          f"onnx MatMulNBits needs a power-of-two group_size >= 16, got {g}; "
                          f"nearest: {nearest}")


@register(Targets.ONNX, "onnx.opset", f"the torch.onnx dynamo exporter emits opset {MIN_OPSET}+",
          "https://pytorch.org/docs/stable/onnx_dynamo.html")
def _opset(ctx: Context):
    opts = ctx.spec.targets.onnx
    if opts is not None and opts.opset < MIN_OPSET:
        yield Finding(("targets", "onnx", "opset"),
                      f"opset {opts.opset} is below {MIN_OPSET}, the lowest the torch.onnx dynamo "
                      f"exporter emits; nearest: {MIN_OPSET} (21 recommended)")


@register(Targets.ONNX, "onnx.kv_cache", "the ONNX decoder's KV cache is float32 graph I/O",
          "https://onnxruntime.ai/docs/genai/reference/config.html")
def _kv_cache(ctx: Context):
    if ctx.spec.quantization.kv_cache != KVCache.NONE:
        yield Finding(("quantization", "kv_cache"),
                      f"the ONNX target keeps the KV cache in float32 (the past/present graph "
                      f"inputs and outputs); {ctx.spec.quantization.kv_cache} is not supported; "
                      "nearest: none")


@register(Targets.ONNX, "onnx.block_max", f"MatMulNBits CPU kernels take blocks up to {MAX_BLOCK}",
          "https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/contrib_ops/cpu/quantization/matmul_nbits.cc")
def _block_max(ctx: Context):
    seen = set()
    for scheme in (Schemes.INT4, Schemes.INT8):
        for _, s in ctx.using(scheme):
            if s.group_size is not None and s.group_size > MAX_BLOCK and ctx.source(s) not in seen:
                seen.add(ctx.source(s))
                yield Finding(ctx.source(s) + ("group_size",),
                              f"onnxruntime's MatMulNBits takes blocks of at most {MAX_BLOCK}, got "
                              f"{s.group_size}; nearest: {MAX_BLOCK} (or null for per channel)")


register_layer_kinds(Targets.ONNX)  # the layer kinds mixers.CARRIED lists


@register(Targets.ONNX, "onnx.short_conv_layout",
          "short_conv layers run as onnxruntime-genai's lfm2 model: conv and full-attention "
          "layers only, a token decoder only",
          "https://github.com/microsoft/onnxruntime-genai/blob/main/src/models/kv_cache.cpp")
def _short_conv(ctx: Context):
    m = ctx.spec.model
    if not any(row.attention == "short_conv" for row in m.table):
        return
    # genai's LFM2 cache treats every layer that is not "full_attention" as a convolution
    sliding = [i for i, row in enumerate(m.table) if row.attention == "sliding"]
    if sliding:
        yield Finding(("model", "layer_pattern"),
                      f"onnx runs short_conv layers as onnxruntime-genai's lfm2 model, whose "
                      f"cache knows conv and full-attention layers only; sliding layers: "
                      f"{', '.join(map(str, sliding))}: make them full or disable targets.onnx")
    yield from _no_embeds_decoder(ctx, "short_conv")


@register(Targets.ONNX, "onnx.mamba2_layout",
          "mamba2 layers carry their conv and recurrent states as graph I/O (onnxruntime runs "
          "it; onnxruntime-genai 0.18 has no Mamba-2 type): a token decoder, no short_conv "
          "layers beside them",
          "omnic/targets/onnx/mamba2_state.py")
def _mamba2(ctx: Context):
    m = ctx.spec.model
    kinds = {row.attention for row in m.table}
    if "mamba2" not in kinds:
        return
    if "short_conv" in kinds:
        yield Finding(("model", "layer_pattern"),
                      "onnx exports either short_conv (genai's lfm2 layout) or mamba2 layers, "
                      "not both in one decoder: disable targets.onnx")
    yield from _no_embeds_decoder(ctx, "mamba2")


@register(Targets.ONNX, "onnx.gated_deltanet_layout",
          "gated_deltanet layers carry their conv and recurrent states as graph I/O in "
          "onnxruntime-genai's qwen3_5_text layout: a token decoder, no short_conv or mamba2 "
          "layers beside them",
          "omnic/targets/onnx/deltanet_state.py")
def _gated_deltanet(ctx: Context):
    kinds = {row.attention for row in ctx.spec.model.table}
    if "gated_deltanet" not in kinds:
        return
    others = sorted(kinds & {"short_conv", "mamba2"})
    if others:  # one state layout (and one genai model type) per decoder
        yield Finding(("model", "layer_pattern"),
                      f"onnx exports either gated_deltanet layers (genai's qwen3_5_text layout) "
                      f"or {' and '.join(others)} layers, not both in one decoder: disable "
                      "targets.onnx")
    yield from _no_embeds_decoder(ctx, "gated_deltanet")


def _no_embeds_decoder(ctx: Context, kind: str):
    """The refusal of modalities beside `kind` layers: the multimodal folder's text.onnx takes
    inputs_embeds (multimodal.py), which has no state I/O yet."""
    mods = ctx.spec.modalities
    parts = [k for k in ("vision", "audio", "sensors", "action_head")
             if getattr(mods, k) is not None]
    if parts:
        yield Finding(("modalities",),
                      f"onnx has no inputs_embeds decoder (text.onnx) with {kind} layers "
                      f"yet, which modalities need ({', '.join(parts)}): disable targets.onnx")
