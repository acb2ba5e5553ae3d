"""omnic's attention rule: the decoder's attention block -> com.microsoft GroupQueryAttention.

onnxscript's own GQA rule expects the Hugging Face export (cos/sin computed from inv_freq, the
transformers causal-mask subgraph). The omnic decoder gathers cos/sin from precomputed tables
(omnic.targets.onnx.rope turns them into RotaryEmbedding first) and builds its mask as
`(q_pos - k_pos >= 0) [& (q_pos - k_pos < window)] & attention_mask`, so this rule matches that
form. What it folds into the one node, each checked against onnxruntime 1.31's CPU kernel:
  - the sliding window: `local_window_size` = the window, since the kernel lets a query see
    `local_window_size` keys counting itself (0 <= q - k < W), omnic's convention too (tested in
    tests/targets/test_onnx_families.py; the kernel at onnxruntime@008eeb9 softmaxed over W + 1
    keys, so the convention is worth re-checking on upgrades);
  - the rotary: `do_rotary=1` with the layer's own tables (Gemma 3's local and global layers
    read different ones), partial rotary included; the kernel wants head_size % 16 == 0 and the
    rotary dims a multiple of 16, so other layers stay unfused. A NoPE layer (no rotary) fuses
    with `do_rotary=0` (head_size a multiple of 8);
  - Gemma 2's tanh soft-cap of the scores (`softcap`, applied after `scale`, as omnic does) and
    the score scale (`scale`: query_pre_attn_scalar, Granite's attention multiplier).
Per-head q/k norms (Qwen3, Gemma 3) stay plain SimplifiedLayerNormalization nodes in front of the
fused node: GQA's q_norm_weight/k_norm_weight inputs are not implemented on CPU (1.31). Norms over
the full width (OLMo 2) sit before the head split and need nothing.

The fused GroupQueryAttention follows onnxruntime-genai's convention for the attention mask: it
reads only each row's length (`seqlens_k = sum(attention_mask) - 1`, `total_sequence_length =
attention_mask.shape[1]`), i.e. masks with ones then padding, which is what genai feeds.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_attention_mask_reformatting_for_gqa, get_attention_op_attributes)
  ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.GroupQueryAttention
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _fusion_utils, pattern

from omnic.targets.onnx.rules import HEAD_MULTIPLE, ROTARY_HEAD_MULTIPLE, ROTARY_MULTIPLE

MS = "com.microsoft"
_ANY = pattern.ANY_VALUE


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _scalar(value: ir.Value | None) -> int | float | None:
    """The number held by a one-element constant (a Python int or float), else None."""
    v = _const(value)
    return v.reshape(()).item() if v is not None and v.size == 1 else None


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


def _unsqueezed(value: ir.Value, axis: int) -> ir.Value | None:
    """x when `value` = Unsqueeze(x, [axis])."""
    node = value.producer()
    axes = None if node is None or node.op_type != "Unsqueeze" else _const(node.inputs[1])
    return node.inputs[0] if axes is not None and axes.reshape(-1).tolist() == [axis] else None


def _difference(node: ir.Node | None, op_type: str) -> ir.Value | None:
    """The value d when `node` is `op_type(d, constant)` and d = q_idx[:, None] - k_idx[None]
    with k_idx = Range(0, S, 1) and q_idx = k_idx or its tail (the new tokens' slots)."""
    if node is None or node.op_type != op_type or _const(node.inputs[1]) is None:
        return None
    sub = node.inputs[0].producer()
    if sub is None or sub.op_type != "Sub":
        return None
    q_idx, k_idx = _unsqueezed(sub.inputs[0], 1), _unsqueezed(sub.inputs[1], 0)
    rng = None if k_idx is None else k_idx.producer()
    if q_idx is None or rng is None or rng.op_type != "Range" \
            or _scalar(rng.inputs[0]) != 0 or _scalar(rng.inputs[2]) != 1:
        return None
    tail = q_idx.producer()
    if q_idx is not k_idx and not (  # Slice(k_idx, start, INT64_MAX, axes=[0], steps=[1])
            tail is not None and tail.op_type == "Slice" and tail.inputs[0] is k_idx
            and _scalar(tail.inputs[2]) == 2**63 - 1 and len(tail.inputs) == 5
            and _scalar(tail.inputs[3]) == 0 and _scalar(tail.inputs[4]) == 1):
        return None
    return node.inputs[0]


def mask_window(mask: ir.Value) -> tuple[bool, int | None]:
    """(understood, window) of mask == Unsqueeze(causal) & attention_mask, where causal is
    `q_idx - k_idx >= 0`, optionally `& q_idx - k_idx < window` (window None when absent)."""
    node = mask.producer()
    if node is None or node.op_type != "And":
        return False, None
    a, b = node.inputs
    for causal, keep in ((a, b), (b, a)):
        if not _from_attention_mask(keep):
            continue
        n = causal.producer()
        while n is not None and n.op_type == "Unsqueeze":
            n = n.inputs[0].producer()
        terms = [n] if n is None or n.op_type != "And" else [i.producer() for i in n.inputs]
        ge = [t for t in terms if _difference(t, "GreaterOrEqual") is not None
              and _scalar(t.inputs[1]) == 0]
        less = [t for t in terms if _difference(t, "Less") is not None]
        if len(ge) != 1 or len(ge) + len(less) != len(terms) or len(less) > 1:
            continue
        if not less:
            return True, None
        window = _scalar(less[0].inputs[1])
        if _difference(less[0], "Less") is not _difference(ge[0], "GreaterOrEqual") \
                or window is None or window != int(window) or window < 1:
            continue
        return True, int(window)
    return False, None


def _flat(op, x_bshd: ir.Value, width: int) -> ir.Value:
    """[B, S, heads, head_dim] as [B, S, heads * head_dim]: the Reshape's own input when
    `x_bshd` was split off such a value, else a new Reshape (after a per-head norm)."""
    node = x_bshd.producer()
    if node is not None and node.op_type == "Reshape":
        x = node.inputs[0]
        if x.shape is not None and x.shape.rank() == 3 and x.shape[2] == width \
                and list(x.shape)[:2] == list(x_bshd.shape)[:2]:
            return x
    return op.Reshape(x_bshd, op.Constant(value_ints=[0, 0, width]))


class GroupQueryAttention(pattern.RewriteRuleClassBase):
    """The omnic decoder's attention block -> com.microsoft GroupQueryAttention (rotary inside,
    or none for a NoPE layer: `rotary=False`).

    The pattern has ONE output, the attention output: with the present key/value as two more
    pattern outputs, onnxscript's matcher tries every pair of Concat nodes for every candidate
    root node, cubic in the layer count (30 layers: over five minutes). The present Concats are
    matched as inner nodes instead, so nothing is removed by the rule itself (they still feed
    the graph outputs); `cleanup` moves the graph outputs present.{i}.key/value onto the fused
    node's outputs and the rewriter's dead-node pass drops the unfused attention.
    """

    def __init__(self, rotary: bool = True) -> None:
        super().__init__("OmnicGroupQueryAttention" + ("" if rotary else "NoRope"),
                         remove_nodes=False)
        self._rotary = rotary
        self._presents: list[tuple[ir.Value, ir.Value]] = []

    def pattern(self, op, q_bshd, k_bshd, v_bshd, past_k, past_v, position_ids, cos, sin,
                masked, scale, neg):
        def heads(x):  # [B, S, heads, head_dim] -> [B, heads, S, head_dim]
            return op.Transpose(x, perm=[0, 2, 1, 3])

        def repeat(cache, name):  # transformers' repeat_kv, absent when n_kv_heads == n_heads
            unsqueezed = op.Unsqueeze(cache, _ANY, _outputs=[name])
            return pattern.OrValue([op.Reshape(op.Expand(unsqueezed, _ANY), _ANY), cache])

        q, k = heads(q_bshd), heads(k_bshd)
        if self._rotary:
            q = op.RotaryEmbedding(q, position_ids, cos, sin, _domain=MS, _outputs=["q_rot"])
            k = op.RotaryEmbedding(k, position_ids, cos, sin, _domain=MS, _outputs=["k_rot"])
        v = heads(v_bshd)
        present_k = op.Concat(past_k, k, axis=2, _outputs=["present_k"])
        present_v = op.Concat(past_v, v, axis=2, _outputs=["present_v"])
        keys_t = op.Transpose(repeat(present_k, "k_unsqueezed"), perm=[0, 1, 3, 2])
        scores = op.Mul(op.MatMul(q, keys_t), scale)
        capped = op.Mul(op.Tanh(op.Div(scores, _ANY, _outputs=["cap_in"])), _ANY,
                        _outputs=["capped"])  # Gemma 2's tanh soft-cap
        # `masked` = Not(mask) is shared by every layer, so it is an input here, checked below.
        logits = op.Where(masked, neg, pattern.OrValue([capped, scores]))
        probs = op.Softmax(logits, axis=-1)
        out = op.Transpose(op.MatMul(probs, repeat(present_v, "v_unsqueezed")), perm=[0, 2, 1, 3])
        return op.Reshape(out, _ANY)

    def check(self, context, q_bshd, k_bshd, v_bshd, past_k, masked, scale, neg, cos=None,
              q_rot=None, k_rot=None, k_unsqueezed=None, v_unsqueezed=None, cap_in=None,
              capped=None, **_):
        result = pattern.MatchResult()
        s, n = _scalar(scale), _scalar(neg)
        # The exporter writes masked_fill(-inf) as the float32 minimum; both mean "never attend".
        if s is None or n is None or n > -1e30:
            return result.fail("scale or the -inf mask fill is not a scalar constant")
        shapes = [x.shape for x in (q_bshd, k_bshd, v_bshd)]
        if any(sh is None or sh.rank() != 4 or not all(isinstance(d, int) for d in sh[2:])
               for sh in shapes):
            return result.fail("q/k/v are not [batch, seq, heads, head_dim]",
                               [q_bshd, k_bshd, v_bshd])
        head_dim = shapes[0][3]
        n_heads, n_kv = shapes[0][2], shapes[1][2]
        if shapes[1][2:] != shapes[2][2:] or shapes[1][3] != head_dim or n_heads % n_kv:
            return result.fail("k/v heads differ, or kv heads do not divide query heads")
        if past_k.shape is None or past_k.shape.rank() != 4 or past_k.shape[3] != head_dim:
            return result.fail("past key is not [batch, kv_heads, past, head_dim]", past_k)
        if head_dim % HEAD_MULTIPLE:
            return result.fail(f"head_dim {head_dim}: GQA needs a multiple of {HEAD_MULTIPLE}")
        if self._rotary:
            failure = self._check_rotary(cos, head_dim, q_rot, k_rot)
            if failure:
                return result.fail(failure)
        softcap = None
        if capped is not None:  # tanh(scores / cap) * cap with the same constant cap
            softcap = _scalar(cap_in.producer().inputs[1])
            if softcap is None or softcap <= 0 or _scalar(capped.producer().inputs[1]) != softcap:
                return result.fail("the soft-cap is not tanh(x / cap) * cap", capped)
        negation = masked.producer()
        understood, window = (False, None) if negation is None or negation.op_type != "Not" \
            else mask_window(negation.inputs[0])
        if not understood:
            return result.fail("mask is not causal [& window] & attention_mask", masked)
        # repeat_kv inserts the group axis right after the kv heads, so query head h reads kv
        # head h // group, GroupQueryAttention's own mapping.
        for unsq in (k_unsqueezed, v_unsqueezed):
            axes = None if unsq is None else _const(unsq.producer().inputs[1])
            if unsq is not None and (axes is None or axes.reshape(-1).tolist() != [2]):
                return result.fail("kv heads repeated in an order GQA does not use", unsq)
        self._dims = (n_heads, n_kv, head_dim)
        self._scale, self._window = float(s), window
        self._softcap = None if softcap is None else float(softcap)
        return result

    @staticmethod
    def _check_rotary(cos: ir.Value, head_dim: int, q_rot: ir.Value, k_rot: ir.Value) -> str:
        """Why GQA's own rotary cannot replace the matched RotaryEmbedding nodes ("" if it can)."""
        c = _const(cos)
        if c is None or c.ndim != 2:
            return "rotary cache is not a constant table"
        rotary_dim = 2 * c.shape[1]
        if head_dim % ROTARY_HEAD_MULTIPLE or rotary_dim % ROTARY_MULTIPLE \
                or rotary_dim > head_dim:
            return (f"head_dim {head_dim} / rotary dims {rotary_dim}: GQA's rotary needs "
                    f"multiples of {ROTARY_MULTIPLE}")
        for rot in (q_rot, k_rot):
            attrs = rot.producer().attributes
            if attrs.get_int("interleaved", 0) != 0:
                return "interleaved rotary"
            if attrs.get_int("rotary_embedding_dim", 0) not in (0, rotary_dim) \
                    or (rotary_dim < head_dim and not attrs.get_int("rotary_embedding_dim", 0)):
                return "rotary_embedding_dim disagrees with the cos table"
        return ""

    def rewrite(self, op, q_bshd, k_bshd, v_bshd, past_k, past_v, masked, present_k, present_v,
                position_ids=None, cos=None, sin=None, **_):
        attention_mask = _attention_mask_input(masked)
        summed = op.ReduceSum(attention_mask, op.Constant(value_ints=[1]), keepdims=0)
        one = op.Constant(value=ir.tensor(np.array(1, np.int64)))
        seqlens_k = op.Cast(op.Sub(summed, one), to=ir.DataType.INT32)
        total = op.Cast(op.Gather(op.Shape(attention_mask), one, axis=0), to=ir.DataType.INT32)
        n_heads, n_kv, head_dim = self._dims
        q, k, v = (_flat(op, x, h * head_dim)
                   for x, h in ((q_bshd, n_heads), (k_bshd, n_kv), (v_bshd, n_kv)))
        inputs = [q, k, v, past_k, past_v, seqlens_k, total]
        attrs = {"num_heads": n_heads, "kv_num_heads": n_kv}
        if self._rotary:
            inputs += [cos, sin, position_ids]
            attrs.update(do_rotary=1, rotary_interleaved=0)
        attrs["scale"] = self._scale
        if self._window is not None:
            attrs["local_window_size"] = self._window
        if self._softcap is not None:
            attrs["softcap"] = self._softcap
        out, new_k, new_v = op.GroupQueryAttention(*inputs, **attrs, _domain=MS, _outputs=3)
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


fuse_gqa = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet(
    [GroupQueryAttention.rule(), GroupQueryAttention.rule(rotary=False)]))
