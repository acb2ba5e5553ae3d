"""Graph clean-up and the fusions onnxruntime rewards (their order: omnic.targets.onnx.passes).

The generic rules are onnxscript's own (`onnxscript.rewriter.ort_fusions`): RMSNorm ->
SimplifiedLayerNormalization, residual Add + RMSNorm -> SkipSimplifiedLayerNormalization, the
rotate-half pattern -> RotaryEmbedding. Three rules are omnic's, because the omnic decoder's
graph differs from the Hugging Face export those rules were written for:
  - `rope.RopeTable`: RoPE whose cos/sin are gathered from a precomputed table at
    position_ids -> com.microsoft RotaryEmbedding(x, position_ids, cos_cache, sin_cache);
  - `rope.PartialRope`: the rotated first dims concatenated with the rest -> one RotaryEmbedding
    with rotary_embedding_dim (partial rotary, Phi-4-mini);
  - `gqa.GroupQueryAttention`: q/k/v projections, rotary (or none: NoPE), past/present
    concatenation, repeat-kv, scaled, soft-capped, causal or sliding-window masked softmax
    attention -> com.microsoft GroupQueryAttention (gqa.py lists what it folds in and why).
After it, `window_cache.use_window_caches` gives sliding layers window-sized caches when every
layer fused (genai's windowed KV cache).
Then one storage-level fusion, `pack_qkv`: the three MatMulNBits feeding a GroupQueryAttention
become one (rows concatenated, biases into MatMulNBits' bias input) and GroupQueryAttention takes
the packed [batch, seq, (heads + 2 kv_heads) * head_dim] query, as the onnxruntime-genai builder
writes it: one kernel and one activation quantization per layer instead of three.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_attention_qkv_fused)
A rule that does not match leaves the graph as it was: fusions never change results, only speed
(the golden check proves it on every build).
  ref: https://github.com/microsoft/onnxscript/tree/main/onnxscript/rewriter/ort_fusions
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

MS = "com.microsoft"

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


# Optional outputs onnxruntime computes only when they are connected: the normalizations' mean
# and inverse standard deviation (training outputs). onnxscript's fusions connect all four;
# dropped, SkipSimplifiedLayerNormalization took 16 instead of 27 us per decode step (SmolLM
# shape, 1 thread), as in the onnxruntime-genai builder's graphs.
# ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.SkipSimplifiedLayerNormalization
_OPTIONAL_OUTPUTS = {("", "SimplifiedLayerNormalization"): (1, 2),
                     (MS, "SkipSimplifiedLayerNormalization"): (1, 2)}


def drop_unused_outputs(model: "ir.Model") -> int:
    """Give unused optional outputs the empty name (= absent in ONNX); how many were dropped."""
    dropped = 0
    for node in model.graph:
        domain = "" if node.domain == "ai.onnx" else node.domain
        for i in _OPTIONAL_OUTPUTS.get((domain, node.op_type), ()):
            out = node.outputs[i] if i < len(node.outputs) else None
            if out is not None and out.name != "" and not out.uses() \
                    and not out.is_graph_output():
                out.name = ""
                dropped += 1
    return dropped


def _nbits_source(value: "ir.Value") -> tuple["ir.Node", "ir.Value | None"] | None:
    """(MatMulNBits node, constant bias or None) when `value` = MatMulNBits(x) [+ bias]."""
    node = value.producer() if value is not None else None
    bias = None
    if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx"):
        for a, b in (node.inputs, node.inputs[::-1]):
            if b is not None and b.const_value is not None and len(b.shape or ()) == 1 \
                    and a is not None and a.producer() is not None \
                    and a.producer().op_type == "MatMulNBits" and len(a.uses()) == 1:
                node, bias = a.producer(), b
                break
        else:
            return None
    if node is None or node.op_type != "MatMulNBits" or node.domain != MS \
            or len(node.inputs) not in (3, 4):
        return None
    return node, bias


def pack_qkv(model: "ir.Model", records: dict[str, dict[str, Any]]) -> int:
    """Pack the q/k/v MatMulNBits of each GroupQueryAttention into one (in place).

    Only when the three read the same activation with the same bits, block, symmetry and
    accuracy level, and their storage is used by nothing else; `records` of q/k/v then point at
    the packed initializers with their `rows` (read by `quant.read_weights`).

    Returns:
        How many attention blocks were packed.
    """
    import numpy as np
    import onnx_ir as ir

    graph = model.graph
    by_qweight = {r["qweight"]: name for name, r in records.items() if r.get("qweight")}
    packed = 0
    for gqa in list(graph):
        if gqa.op_type != "GroupQueryAttention" or gqa.domain != MS or len(gqa.inputs) < 3:
            continue
        sources = [_nbits_source(v) for v in gqa.inputs[:3]]
        if any(s is None for s in sources):
            continue
        mms, biases = [s[0] for s in sources], [s[1] for s in sources]
        attrs = [{k: a.value for k, a in m.attributes.items() if k != "N"} for m in mms]
        names = [by_qweight.get(m.inputs[1].name) for m in mms]
        if len({id(m.inputs[0]) for m in mms}) != 1 or any(a != attrs[0] for a in attrs) \
                or len({len(m.inputs) for m in mms}) != 1 or None in names \
                or (None in biases and any(b is not None for b in biases)) \
                or any(len(v.uses()) != 1 for m in mms for v in m.inputs[1:]) \
                or any(len(m.outputs[0].uses()) != 1 for m in mms):
            continue
        q = names[0]
        base = q[: -len(".q.weight")] + ".qkv.weight" if q.endswith(".q.weight") else q + "+kv"
        parts = {"qweight": [], "scales": [], "qzeros": []}
        for m in mms:
            for key, v in zip(parts, m.inputs[1:]):
                parts[key].append(v.const_value.numpy())
        stored = []
        for key, arrays in parts.items():
            if arrays:
                array = np.ascontiguousarray(np.concatenate(arrays, axis=0))
                value = ir.Value(name=f"{base}.{key}", shape=ir.Shape(array.shape),
                                 type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
                value.const_value = ir.tensor(array, name=value.name)
                graph.register_initializer(value)
                stored.append(value)
        inputs = [mms[0].inputs[0], *stored]
        if biases[0] is not None:  # MatMulNBits inputs: A, B, scales, zero_points, g_idx, bias
            bias = np.concatenate([b.const_value.numpy() for b in biases]).astype(np.float32)
            b_val = ir.Value(name=f"{base}.bias", shape=ir.Shape(bias.shape),
                             type=ir.TensorType(ir.DataType.FLOAT))
            b_val.const_value = ir.tensor(bias, name=b_val.name)
            graph.register_initializer(b_val)
            inputs += [None] * (5 - len(inputs)) + [b_val]
        n_total = int(sum(m.attributes.get_int("N") for m in mms))
        node = ir.node("MatMulNBits", inputs, domain=MS, name=f"{base}/MatMulNBits",
                       attributes={**attrs[0], "N": n_total})
        out = node.outputs[0]
        first_out = gqa.inputs[0]
        out.type = first_out.type
        if first_out.shape is not None:
            out.shape = ir.Shape([*list(first_out.shape)[:-1], n_total])
        graph.insert_before(mms[0], node)
        dead = [v.producer() for v in gqa.inputs[:3]]
        gqa.replace_input_with(0, out)
        gqa.replace_input_with(1, None)
        gqa.replace_input_with(2, None)
        start = 0
        for name, m in zip(names, mms):
            rows = m.attributes.get_int("N")
            rec = records[name]
            rec.update(qweight=stored[0].name, scales=stored[1].name,
                       zero_points=stored[2].name if len(stored) > 2 else None,
                       rows=[start, start + rows])
            start += rows
        for n in dead + [m for m in mms if m not in dead]:
            if n.graph is graph:
                graph.remove(n, safe=True)
        packed += 1
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
    return packed


def fused_ops(model: "ir.Model") -> dict[str, int]:
    """Counts of the fused onnxruntime ops present in `model` (absent ops omitted)."""
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}
