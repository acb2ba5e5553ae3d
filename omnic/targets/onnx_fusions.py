"""Graph clean-up and the fusions onnxruntime rewards, as an explicit ordered list.

The generic rules are onnxscript's own (`onnxscript.rewriter.ort_fusions`): RMSNorm ->
SimplifiedLayerNormalization, residual Add + RMSNorm -> SkipSimplifiedLayerNormalization, the
rotate-half pattern -> RotaryEmbedding. Two rules are omnic's, because the omnic decoder's graph
differs from the Hugging Face export those rules were written for:
  - `onnx_gqa.RopeTable`: RoPE whose cos/sin are gathered from a precomputed table at
    position_ids -> com.microsoft RotaryEmbedding(x, position_ids, cos_cache, sin_cache);
  - `onnx_gqa.GroupQueryAttention`: q/k/v projections, rotary, past/present concatenation,
    repeat-kv, scaled, masked softmax attention -> com.microsoft GroupQueryAttention.
A rule that does not match leaves the graph as it was: fusions never change results, only speed
(the golden check proves it on every build).
  ref: https://github.com/microsoft/onnxscript/tree/main/onnxscript/rewriter/ort_fusions
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir

# Never constant-fold an op whose input has more elements than this: weights stay initializers
# (folding a Transpose of a weight would duplicate it under a new name).
FOLD_INPUT_LIMIT = 1024

# The contrib ops a fusion can introduce; `fused_ops` reports those present.
FUSED_OPS = (
    "SimplifiedLayerNormalization", "com.microsoft::SkipSimplifiedLayerNormalization",
    "com.microsoft::RotaryEmbedding", "com.microsoft::GroupQueryAttention",
    "com.microsoft::MultiHeadAttention", "com.microsoft::FusedMatMul",
)


def cleanup(model: "ir.Model") -> None:
    """Constant folding, dead code and common subexpressions, with weights left untouched."""
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import optimize_ir

    common.ShapeInferencePass()(model)
    optimize_ir(model, input_size_limit=FOLD_INPUT_LIMIT)


def fuse(model: "ir.Model") -> dict[str, int]:
    """Apply the fusions in order (in place); return how many times each rule fired."""
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    from omnic.targets import onnx_gqa

    counts: dict[str, int] = {}
    # RMSNorm first: the skip fusion matches an Add feeding a SimplifiedLayerNormalization.
    counts["rms_normalization"] = fuse_rms_normalization(model)
    counts["skip_rms_normalization"] = fuse_skip_rms_normalization(model)
    # Rotate-half -> a temporary RotaryEmbedding function node; the table rule turns it into
    # onnxruntime's op (it must see the cos/sin gathers, so before any other cleanup).
    counts["rotary_embedding"] = fuse_rotary_embedding(model)
    counts["rope_table"] = onnx_gqa.fuse_rope_table(model)
    # Attention last: its pattern starts from the com.microsoft RotaryEmbedding nodes.
    counts["group_query_attention"] = onnx_gqa.fuse_gqa(model)
    # Rotary function nodes left unconverted are inlined back to plain ops here.
    cleanup(model)
    return counts


def fused_ops(model: "ir.Model") -> dict[str, int]:
    """Counts of the fused onnxruntime ops present in `model` (absent ops omitted)."""
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}
