"""omnic's two onnxscript rewrite rules: table RoPE -> RotaryEmbedding, attention -> GQA.

onnxscript's own GQA rule expects the Hugging Face export (cos/sin computed from inv_freq, the
transformers causal-mask subgraph). The omnic decoder gathers cos/sin from precomputed tables
and builds its mask as `(q_pos - k_pos >= 0) & attention_mask`, so these rules match that form.

The fused GroupQueryAttention follows onnxruntime-genai's convention for the attention mask: it
reads only each row's length (`seqlens_k = sum(attention_mask) - 1`, `total_sequence_length =
attention_mask.shape[1]`), i.e. masks with ones then padding, which is what genai feeds.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_attention_mask_reformatting_for_gqa)
  ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.GroupQueryAttention
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _fusion_utils, pattern

MS = "com.microsoft"
_ANY = pattern.ANY_VALUE


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


class RopeTable(pattern.RewriteRuleClassBase):
    """RotaryEmbedding(x, cos_table[position_ids], sin_table[position_ids]) -> onnxruntime's op.

    The table holds cat(freqs, freqs) (rotate-half convention), so its first half is the
    `cos_cache` onnxruntime wants: [max_position, head_dim / 2].
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


def _from_attention_mask(value: ir.Value, depth: int = 4) -> bool:
    """True when `value` is the graph input attention_mask through Cast/Unsqueeze only."""
    for _ in range(depth):
        if value.is_graph_input():
            return value.name == "attention_mask"
        node = value.producer()
        if node is None or node.op_type not in ("Cast", "Unsqueeze"):
            return False
        value = node.inputs[0]
    return False


def _is_causal_and_padding(mask: ir.Value) -> bool:
    """mask == Unsqueeze(q_idx - k_idx >= 0) & attention_mask (no window, no other terms)."""
    node = mask.producer()
    if node is None or node.op_type != "And":
        return False
    a, b = node.inputs
    for causal, keep in ((a, b), (b, a)):
        if not _from_attention_mask(keep):
            continue
        n = causal.producer()
        while n is not None and n.op_type == "Unsqueeze":
            n = n.inputs[0].producer()
        if n is None or n.op_type != "GreaterOrEqual":
            continue
        zero = _const(n.inputs[1])
        sub = n.inputs[0].producer()
        is_zero = zero is not None and zero.size == 1 and float(zero.reshape(())) == 0
        if is_zero and sub is not None and sub.op_type == "Sub":
            return True
    return False


class GroupQueryAttention(pattern.RewriteRuleClassBase):
    """The omnic decoder's attention block -> com.microsoft GroupQueryAttention (rotary inside).

    The pattern has ONE output, the attention output: with the present key/value as two more
    pattern outputs, onnxscript's matcher tries every pair of Concat nodes for every candidate
    root node, cubic in the layer count (30 layers: over five minutes). The present Concats are
    matched as inner nodes instead, so nothing is removed by the rule itself (they still feed
    the graph outputs); `cleanup` moves the graph outputs present.{i}.key/value onto the fused
    node's outputs and the rewriter's dead-node pass drops the unfused attention.
    """

    def __init__(self) -> None:
        super().__init__("OmnicGroupQueryAttention", remove_nodes=False)
        self._presents: list[tuple[ir.Value, ir.Value]] = []

    def pattern(
        self, op, q_bsd, k_bsd, v_bsd, past_k, past_v, position_ids, cos, sin, masked, scale, neg
    ):
        def heads(x, name):
            return op.Transpose(op.Reshape(x, _ANY, _outputs=[name]), perm=[0, 2, 1, 3])

        def repeat(cache, name):  # transformers' repeat_kv, absent when n_kv_heads == n_heads
            unsqueezed = op.Unsqueeze(cache, _ANY, _outputs=[name])
            return pattern.OrValue([op.Reshape(op.Expand(unsqueezed, _ANY), _ANY), cache])

        q = op.RotaryEmbedding(heads(q_bsd, "q_bshd"), position_ids, cos, sin, _domain=MS,
                               _outputs=["q_rot"])
        k = op.RotaryEmbedding(heads(k_bsd, "k_bshd"), position_ids, cos, sin, _domain=MS,
                               _outputs=["k_rot"])
        v = heads(v_bsd, "v_bshd")
        present_k = op.Concat(past_k, k, axis=2, _outputs=["present_k"])
        present_v = op.Concat(past_v, v, axis=2, _outputs=["present_v"])
        keys_t = op.Transpose(repeat(present_k, "k_unsqueezed"), perm=[0, 1, 3, 2])
        scores = op.Mul(op.MatMul(q, keys_t), scale)
        # `masked` = Not(mask) is shared by every layer, so it is an input here, checked below.
        probs = op.Softmax(op.Where(masked, neg, scores), axis=-1)
        out = op.Transpose(op.MatMul(probs, repeat(present_v, "v_unsqueezed")), perm=[0, 2, 1, 3])
        return op.Reshape(out, _ANY)

    def check(self, context, q_bsd, k_bsd, v_bsd, past_k, cos, masked, scale, neg, q_rot, k_rot,
              q_bshd, k_bshd, v_bshd, k_unsqueezed=None, v_unsqueezed=None, **_):
        result = pattern.MatchResult()
        c, s, n = _const(cos), _const(scale), _const(neg)
        if c is None or c.ndim != 2:
            return result.fail("rotary cache is not a constant table")
        head_dim = 2 * c.shape[1]
        # The exporter writes masked_fill(-inf) as the float32 minimum; both mean "never attend".
        if s is None or s.size != 1 or n is None or n.size != 1 or float(n.reshape(())) > -1e30:
            return result.fail("scale or the -inf mask fill is not a scalar constant")
        for rot in (q_rot, k_rot):
            if rot.producer().attributes.get_int("interleaved", 0) != 0:
                return result.fail("interleaved rotary")
        widths = [x.shape[-1] if x.shape is not None else None for x in (q_bsd, k_bsd, v_bsd)]
        if any(not isinstance(w, int) or w % head_dim for w in widths) or widths[1] != widths[2]:
            return result.fail("q/k/v widths are not whole heads", [q_bsd, k_bsd, v_bsd])
        if past_k.shape is None or past_k.shape.rank() != 4 or past_k.shape[3] != head_dim:
            return result.fail("past key is not [batch, kv_heads, past, head_dim]", past_k)
        negation = masked.producer()
        if negation is None or negation.op_type != "Not" \
                or not _is_causal_and_padding(negation.inputs[0]):
            return result.fail("mask is not causal & attention_mask (sliding window?)", masked)
        self._heads = (widths[0] // head_dim, widths[1] // head_dim)
        if self._heads[0] % self._heads[1]:
            return result.fail("kv heads do not divide query heads")
        # Heads are split off the last axis, head-major: [B, S, heads, head_dim].
        for x, split, heads in ((q_bsd, q_bshd, self._heads[0]), (k_bsd, k_bshd, self._heads[1]),
                                (v_bsd, v_bshd, self._heads[1])):
            if x.shape.rank() != 3 or split.shape is None \
                    or list(split.shape)[2:] != [heads, head_dim]:
                return result.fail("q/k/v are not split into [batch, seq, heads, head_dim]", split)
        # repeat_kv inserts the group axis right after the kv heads, so query head h reads kv
        # head h // group, GroupQueryAttention's own mapping.
        for unsq in (k_unsqueezed, v_unsqueezed):
            axes = None if unsq is None else _const(unsq.producer().inputs[1])
            if unsq is not None and (axes is None or axes.reshape(-1).tolist() != [2]):
                return result.fail("kv heads repeated in an order GQA does not use", unsq)
        self._scale = float(s.reshape(()))
        return result

    def rewrite(self, op, q_bsd, k_bsd, v_bsd, past_k, past_v, position_ids, cos, sin, masked,
                present_k, present_v, **_):
        attention_mask = _attention_mask_input(masked)
        summed = op.ReduceSum(attention_mask, op.Constant(value_ints=[1]), keepdims=0)
        one = op.Constant(value=ir.tensor(np.array(1, np.int64)))
        seqlens_k = op.Cast(op.Sub(summed, one), to=ir.DataType.INT32)
        total = op.Cast(op.Gather(op.Shape(attention_mask), one, axis=0), to=ir.DataType.INT32)
        n_heads, n_kv = self._heads
        out, new_k, new_v = op.GroupQueryAttention(
            q_bsd, k_bsd, v_bsd, past_k, past_v, seqlens_k, total, cos, sin, position_ids,
            num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0,
            scale=self._scale, _domain=MS, _outputs=3,
        )
        self._presents += [(present_k, new_k), (present_v, new_v)]
        return out

    def cleanup(self):
        """Every use of an unfused present (the graph outputs) now reads the fused one."""
        for old, new in self._presents:
            new.shape, new.type = old.shape, old.type
            name = old.name
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            old.name = None if name is None else f"{name}.unfused"
            new.name = name
        self._presents.clear()


def _attention_mask_input(mask: ir.Value) -> ir.Value:
    """The graph input `attention_mask` that `mask` was built from (checked by the rule)."""
    stack, seen = [mask], set()
    while stack:
        v = stack.pop()
        if v.is_graph_input() and v.name == "attention_mask":
            return v
        node = v.producer()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            stack.extend(i for i in node.inputs if i is not None)
    raise ValueError("attention_mask not found")


fuse_rope_table = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet([RopeTable.rule()]))
fuse_gqa = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet([GroupQueryAttention.rule()]))
