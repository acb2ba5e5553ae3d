"""omnic's rotary rules: table RoPE -> RotaryEmbedding, and the partial-rotary form of it.

The omnic decoder gathers cos/sin from precomputed tables (one per distinct (theta, scaling,
dims) of the layer table, so Gemma 3's local and global layers each read their own), where
onnxscript's own rules expect cos/sin computed from inv_freq.

Partial rotary (Phi-4-mini: 96 of 128 dims) rotates the first `d` dims of each head and passes
the rest through: Concat(RotaryEmbedding(x[..., :d]), x[..., d:]). onnxscript has a rule for that
shape (`ort_fusions.rotary_embedding.PartialRotaryEmbeddingFusion`), but its node lacks
`num_heads`, which onnxruntime's kernel requires with `rotary_embedding_dim` ("num_heads must be
provided if rotary_embedding_dim is specified", onnxruntime 1.31), so this module has its own.
  ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.RotaryEmbedding
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _fusion_utils, pattern

MS = "com.microsoft"
_ANY = pattern.ANY_VALUE
_INT64_MAX = 2**63 - 1


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _scalar(value: ir.Value | None) -> int | None:
    """The integer held by a one-element constant, else None."""
    v = _const(value)
    return int(v.reshape(())) if v is not None and v.size == 1 else None


class RopeTable(pattern.RewriteRuleClassBase):
    """RotaryEmbedding(x, cos_table[position_ids], sin_table[position_ids]) -> onnxruntime's op.

    The table holds cat(freqs, freqs) (rotate-half convention), so its first half is the
    `cos_cache` onnxruntime wants: [max_position, rotary_dim / 2].
    """

    def __init__(self) -> None:
        super().__init__("OmnicRopeTable", remove_nodes=False)  # the gathers are shared by layers
        self._halves: dict[int, tuple[ir.Value, ir.Value]] = {}

    def pattern(self, op, x, cos_table, sin_table, position_ids):
        def gathered(table):
            nd = op.GatherND(table, op.Unsqueeze(position_ids, _ANY), batch_dims=0)
            return op.Unsqueeze(pattern.OrValue([nd, op.Gather(table, position_ids, axis=0)]), _ANY)

        return op.RotaryEmbedding(
            x, gathered(cos_table), gathered(sin_table), _domain="ai.onnxruntime._fusion",
            _outputs=["rotated"],
        )

    def check(self, context, x, cos_table, sin_table, position_ids, rotated, **_):
        result = pattern.MatchResult()
        cos, sin = _const(cos_table), _const(sin_table)
        if cos is None or sin is None or cos.ndim != 2 or cos.shape != sin.shape:
            return result.fail("cos/sin are not constant [positions, head_dim] tables")
        half = cos.shape[1] // 2
        if not all(np.array_equal(t[:, :half], t[:, half:]) for t in (cos, sin)):
            return result.fail("the table is not cat(freqs, freqs)")
        if x.shape is None or x.shape.rank() != 4 or x.shape[3] != cos.shape[1]:
            return result.fail("x is not [batch, heads, seq, head_dim]")
        node = rotated.producer()
        if node.attributes.get_int("interleaved", 0) != 0:
            return result.fail("interleaved rotary")
        if position_ids.dtype != ir.DataType.INT64:
            return result.fail("position_ids are not int64")
        return result

    def rewrite(self, op, x, cos_table, sin_table, position_ids, **_):
        key = id(cos_table)
        if key not in self._halves:
            cos, sin = _const(cos_table), _const(sin_table)
            half = cos.shape[1] // 2
            self._halves[key] = tuple(
                op.initializer(ir.tensor(np.ascontiguousarray(t[:, :half])), name=f"{v.name}.half")
                for t, v in ((cos, cos_table), (sin, sin_table))
            )
        cos_half, sin_half = self._halves[key]
        return op.RotaryEmbedding(x, position_ids, cos_half, sin_half, interleaved=0, _domain=MS)

    def cleanup(self):
        self._halves.clear()


class PartialRope(pattern.RewriteRuleClassBase):
    """Concat(RotaryEmbedding(x[..., :d]), x[..., d:]) -> RotaryEmbedding(x) with
    rotary_embedding_dim=d and num_heads (x is [batch, heads, seq, head_dim])."""

    def __init__(self) -> None:
        super().__init__("OmnicPartialRope")

    def pattern(self, op, x, end, start, position_ids, cos, sin):
        part = op.Slice(x, [0], end, [3], [1])
        rest = op.Slice(x, start, [_INT64_MAX], [3], [1])
        rotated = op.RotaryEmbedding(part, position_ids, cos, sin, _domain=MS,
                                     _outputs=["rotated"])
        return op.Concat(rotated, rest, axis=-1)

    def check(self, context, x, end, start, cos, rotated, **_):
        result = pattern.MatchResult()
        d, c = _scalar(end), _const(cos)
        if d is None or d != _scalar(start) or c is None or c.ndim != 2 or 2 * c.shape[1] != d:
            return result.fail("the slices do not split off the table's rotary dims")
        if x.shape is None or x.shape.rank() != 4 or not isinstance(x.shape[1], int) \
                or not isinstance(x.shape[3], int) or not 0 < d < x.shape[3]:
            return result.fail("x is not [batch, heads, seq, head_dim] wider than the rotary", x)
        attrs = rotated.producer().attributes
        if attrs.get_int("interleaved", 0) != 0 or attrs.get_int("rotary_embedding_dim", 0):
            return result.fail("interleaved, or already partial")
        return result

    def rewrite(self, op, x, end, position_ids, cos, sin, **_):
        return op.RotaryEmbedding(x, position_ids, cos, sin, interleaved=0,
                                  num_heads=x.shape[1], rotary_embedding_dim=_scalar(end),
                                  _domain=MS)


fuse_rope_table = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet([RopeTable.rule()]))
fuse_partial_rope = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet([PartialRope.rule()]))
