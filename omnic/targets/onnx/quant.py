"""Weight storage for the ONNX target: MatMulNBits, GatherBlockQuantized, fp16/bf16 and fp32.

Each matrix of the exported graph is found by its canonical name (the exporter names initializers
after the module's state-dict keys) and rewritten into the form its scheme asks for:

| scheme      | MatMul (x @ W.T)                         | embedding Gather                     |
|-------------|------------------------------------------|--------------------------------------|
| fp32        | MatMul(x, W.T), W.T stored transposed    | Gather(W)                            |
| fp16 / bf16 | the same, stored 16-bit, Cast to float32 | Gather(Cast(W))                      |
| int4 / int8 | com.microsoft MatMulNBits (bits, block)  | com.microsoft GatherBlockQuantized   |

A tied embedding is stored once: the lm_head's MatMulNBits weight, reshaped, is also the data of
the GatherBlockQuantized (as onnxruntime-genai's model builder does).
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_embedding_lookup)

The integer codes are omnic's own (`omnic.quant.reference.quantize`), packed into onnxruntime's
layout; for int4 and asymmetric int8 they are bit-identical to onnxruntime's MatMulNBitsQuantizer
(tested), for symmetric int8 omnic keeps the level set -127..127 where onnxruntime uses -128..127.
  ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits

What every matrix became is written into the model's metadata (`omnic.weights`, JSON), so the
stored weights can be read back and dequantized from the file alone (`read_weights`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from omnic.runtime import pages

if TYPE_CHECKING:
    import onnx_ir as ir

WEIGHTS_KEY = "omnic.weights"  # model metadata_props key of the storage records
MS = "com.microsoft"
# The largest MatMulNBits block onnxruntime's CPU kernels accept (16, 32, 64, 128, 256).
# ref: https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/contrib_ops/cpu/quantization/matmul_nbits.cc
MAX_BLOCK = 256
# MatMulNBits `accuracy_level` the ONNX target writes: 4 = int8 compute. onnxruntime then
# quantizes each activation block to int8 and runs its VNNI/AVX2 int8 kernels; at 0 (fp32
# compute) an int8 matrix has no fast CPU kernel and is dequantized whole on every call (the
# tied int8 lm_head of the SmolLM-135M shape took 165 ms of a 190 ms decode step), and int4
# runs ~2.5x slower. 4 is also the onnxruntime-genai builder's CPU default. The weights are
# stored exactly as before; only the activations are rounded (the int4/int8 rows of
# omnic/golden/tolerances.py allow for that).
# ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits
# ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builder.py
#      (int4_accuracy_level)
INT8_COMPUTE = 4


# -- packing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NBits:
    """One [N, K] matrix in MatMulNBits layout (blocks of `block` along K, low nibble first)."""

    bits: int
    block: int
    n: int
    k: int
    data: np.ndarray  # uint8 [N, k_blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks * bits / 8)]; None: 2^(bits-1)


def block_size(k: int, group_size: int | None) -> int:
    """MatMulNBits block for a group size; per channel (None), several blocks sharing a scale.

    onnxruntime's CPU kernels take power-of-two blocks from 16 to 256, so a per-channel row is
    cut into the largest such blocks that divide K, each carrying the row's scale (exactly the
    per-channel values); when none divides K, blocks of up to 256 are padded with zero codes.
    """
    if group_size is not None:
        return int(group_size)
    for b in (MAX_BLOCK, 128, 64, 32, 16):
        if k % b == 0:
            return b
    return min(MAX_BLOCK, max(16, 1 << (int(k) - 1).bit_length()))


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """uint8 codes < 16 along the last axis (even length) -> bytes, first code in the low nibble."""
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(b: np.ndarray) -> np.ndarray:
    return np.stack([b & 0x0F, b >> 4], axis=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


# Rows are quantized this many values at a time: every row is independent, and the reference
# quantizer's float temporaries (several times the input) of a 151936 x 896 embedding would
# otherwise add ~1.5 GB to the compile's peak.
PACK_CHUNK = 1 << 22


def pack_nbits(w: np.ndarray, bits: int, group_size: int | None, symmetric: bool) -> NBits:
    """Quantize a [N, K] float32 matrix with omnic's reference and pack it for MatMulNBits."""
    n, k = w.shape
    rows = max(1, PACK_CHUNK // max(1, k))
    if n <= rows:
        return _pack_rows(w, bits, group_size, symmetric)
    first = _pack_rows(w[:rows], bits, group_size, symmetric)

    def whole(part: np.ndarray | None) -> np.ndarray | None:  # filled below, chunk by chunk
        return None if part is None else np.empty((n, *part.shape[1:]), dtype=part.dtype)

    out = NBits(bits, first.block, n, k, whole(first.data), whole(first.scales),
                whole(first.zero_points))
    for i in range(0, n, rows):
        part = first if i == 0 else _pack_rows(w[i:i + rows], bits, group_size, symmetric)
        out.data[i:i + rows] = part.data
        out.scales[i:i + rows] = part.scales
        if out.zero_points is not None:
            out.zero_points[i:i + rows] = part.zero_points
    return out


def _pack_rows(w: np.ndarray, bits: int, group_size: int | None, symmetric: bool) -> NBits:
    from omnic.quant.reference import quantize

    scheme = {4: "int4", 8: "int8"}[bits]
    n, k = w.shape
    q = quantize(np.asarray(w, dtype=np.float32), scheme, group_size, symmetric)
    block = block_size(k, group_size)
    offset = 1 << (bits - 1)  # MatMulNBits' default zero point when none is given
    codes = q.codes.astype(np.int16) + (offset if symmetric else 0)  # [N, groups, g], unsigned
    scales, zero = q.scale, q.zero_point
    if group_size is None:  # one scale per row, spread over the row's blocks
        k_blocks = -(-k // block)
        pad_code = np.full((n, 1), offset) if symmetric else zero.reshape(n, 1)
        pad = np.broadcast_to(pad_code, (n, k_blocks * block - k))
        row = np.concatenate([codes.reshape(n, k), pad], axis=1)
        codes = row.reshape(n, k_blocks, block)
        scales = np.repeat(scales.reshape(n, 1), k_blocks, axis=1)
        zero = None if zero is None else np.repeat(zero.reshape(n, 1), k_blocks, axis=1)
    u = codes.astype(np.uint8)
    data = _pack_nibbles(u) if bits == 4 else u
    zp = None
    if not symmetric:
        zp = zero.astype(np.uint8)  # [N, k_blocks]
        if bits == 4:
            if zp.shape[1] % 2:  # an odd block count leaves the last high nibble unused: 0
                zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
            zp = _pack_nibbles(zp)
    return NBits(bits, block, n, k, np.ascontiguousarray(data), scales.astype(np.float32), zp)


def unpack_nbits(
    data: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *, bits: int, block: int,
    n: int, k: int,
) -> np.ndarray:
    """Dequantize MatMulNBits storage back to the float32 [N, K] matrix it stands for."""
    k_blocks = (k + block - 1) // block
    raw = np.asarray(data, dtype=np.uint8).reshape(n, k_blocks, -1)
    u = (_unpack_nibbles(raw) if bits == 4 else raw).astype(np.float32)  # [N, k_blocks, block]
    if zero_points is None:
        zp = np.full((n, k_blocks), float(1 << (bits - 1)), np.float32)
    else:
        z = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
        zp = (_unpack_nibbles(z) if bits == 4 else z)[:, :k_blocks].astype(np.float32)
    s = np.asarray(scales, dtype=np.float32).reshape(n, k_blocks)
    u -= zp[..., None]  # in place: the same float32 operations, one array instead of three
    u *= s[..., None]
    w = u.reshape(n, k_blocks * block)
    return w if w.shape[1] == k else np.ascontiguousarray(w[:, :k])


# -- the graph rewrite ---------------------------------------------------------------------------
def _bits(scheme: str) -> int | None:
    return {"int4": 4, "int8": 8}.get(scheme)


_FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def storage_form(tensor: Any, ts: Any, tied: bool) -> dict[str, Any]:
    """How `store_weights` stores one tensor, and its bytes in model.onnx (torch-free).

    Args:
        tensor: an `omnic.spec.inventory.TensorInfo`.
        ts: its TensorScheme.
        tied: the embedding is also the lm_head (one copy serves both).

    Returns:
        {"form", "dtype", "bytes"} plus "bits", "block_size" (and "gather" for the embedding)
        for MatMulNBits: the same values `store_weights` records in `omnic.weights`. Scales are
        float32 (onnxruntime's MatMulNBits takes float32 scales with float32 activations).
    """
    shape = tuple(tensor.shape)
    embedding = tensor.name == "embed.weight"
    bits = _bits(ts.scheme)
    if bits and tensor.is_matrix:
        rows, k = shape
        block = block_size(k, ts.group_size)
        k_blocks = -(-k // block)
        nbytes = rows * k_blocks * block * bits // 8 + rows * k_blocks * 4
        if not ts.symmetric:
            nbytes += rows * -(-k_blocks * bits // 8)
        rec = {"form": "MatMulNBits", "dtype": f"int{bits}", "bits": bits, "block_size": block,
               "bytes": nbytes}
        if embedding:
            rec["gather"] = "GatherBlockQuantized"
        return rec
    n = int(np.prod(shape)) if shape else 1
    dtype = _FLOAT_DTYPES[ts.scheme] if tensor.is_matrix else "float32"
    form = ("Gather" if embedding else "MatMul") if tensor.is_matrix else "initializer"
    return {"form": form, "dtype": dtype, "bytes": n * (4 if dtype == "float32" else 2)}


def _const_init(graph: "ir.Graph", name: str, array: np.ndarray) -> "ir.Value":
    import onnx_ir as ir

    dtype = ir.DataType.from_numpy(array.dtype)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(dtype))
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    return value


def _transposed_initializer(node: "ir.Node") -> "ir.Value | None":
    """The initializer W when `node` is Transpose(W, perm=[1, 0]) of a graph initializer."""
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return None
    perm = node.attributes.get("perm")
    if perm is None or list(perm.as_ints()) != [1, 0]:
        return None
    src = node.inputs[0]
    return src if src is not None and src.is_initializer() else None


class _Store:
    """Builds the stored forms of one model's matrices, each at most once."""

    def __init__(self, model: "ir.Model", plan: Mapping[str, Any]) -> None:
        self.model, self.graph, self.plan = model, model.graph, plan
        self.records: dict[str, dict[str, Any]] = {}
        self._nbits: dict[str, tuple[NBits, list["ir.Value"]]] = {}

    def scheme(self, name: str):
        return self.plan.get(name)

    def nbits(self, name: str, w: np.ndarray) -> tuple[NBits, list["ir.Value"]]:
        if name not in self._nbits:
            ts = self.scheme(name)
            nb = pack_nbits(w, _bits(ts.scheme), ts.group_size, ts.symmetric)
            vals = [_const_init(self.graph, f"{name}.qweight", nb.data),
                    _const_init(self.graph, f"{name}.scales", nb.scales)]
            if nb.zero_points is not None:
                vals.append(_const_init(self.graph, f"{name}.qzeros", nb.zero_points))
            self._nbits[name] = (nb, vals)
            self.records[name] = {
                "form": "MatMulNBits", "qweight": vals[0].name, "scales": vals[1].name,
                "zero_points": vals[2].name if len(vals) > 2 else None, "bits": nb.bits,
                "block_size": nb.block, "N": nb.n, "K": nb.k, "scheme": ts.scheme,
                "group_size": ts.group_size, "symmetric": ts.symmetric,
            }
        return self._nbits[name]


def store_weights(model: "ir.Model", plan: Mapping[str, Any], accuracy_level: int = 0,
                  ) -> dict[str, dict[str, Any]]:
    """Rewrite every planned matrix of a freshly exported graph into its storage form (in place).

    Must run before any optimizer: it recognises the exporter's `MatMul(x, Transpose(W))` with W
    still named by its canonical name. fp16/bf16 matrices are left fp32 here and narrowed by
    `narrow_floats` after the optimizers (which would otherwise fold the Cast back to fp32).

    Args:
        model: the exported model (onnx_ir), initializers named by canonical tensor names.
        plan: canonical name -> TensorScheme (omnic.quant.select).
        accuracy_level: MatMulNBits compute precision; 0 computes in float32 (exact with respect
            to the stored weights), `INT8_COMPUTE` (4) rounds activations to int8 (fast on CPU).

    Returns:
        canonical name -> storage record (JSON-able), also written to the model's metadata.
    """
    import onnx_ir as ir

    st = _Store(model, plan)
    model.opset_imports.setdefault(MS, 1)
    transposed: dict[str, ir.Value] = {}
    for node in list(st.graph):
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            w_val = _transposed_initializer(node.inputs[1].producer() if node.inputs[1] else None)
            if w_val is None or st.scheme(w_val.name) is None:
                continue
            name, w = w_val.name, w_val.const_value.numpy()
            ts = st.scheme(name)
            if _bits(ts.scheme):
                nb, vals = st.nbits(name, w)
                pages.release([w])  # a memory-mapped checkpoint's pages: read, not needed again
                new = ir.node(
                    "MatMulNBits", [node.inputs[0], *vals], domain=MS, name=f"{name}/MatMulNBits",
                    attributes={"K": nb.k, "N": nb.n, "bits": nb.bits, "block_size": nb.block,
                                **({"accuracy_level": accuracy_level} if accuracy_level else {})},
                )
                _replace(st.graph, node, new)
            elif len(w_val.uses()) == 1:  # only this Transpose reads W: store W.T instead
                if name not in transposed:
                    transposed[name] = _const_init(st.graph, f"{name}.T", np.ascontiguousarray(w.T))
                    st.records[name] = {"form": "MatMul", "init": f"{name}.T", "transposed": True,
                                        "dtype": "float32", "scheme": ts.scheme}
                node.replace_input_with(1, transposed[name])
            else:  # a tied fp32 embedding: keep one copy, Transpose at load time
                st.records.setdefault(name, {"form": "MatMul", "init": name, "transposed": False,
                                             "dtype": "float32", "scheme": ts.scheme})
        elif node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
            w_val = node.inputs[0]
            if w_val is None or not w_val.is_initializer() or st.scheme(w_val.name) is None:
                continue
            name, ts = w_val.name, st.scheme(w_val.name)
            if _bits(ts.scheme):
                w = w_val.const_value.numpy()
                _gather_block_quantized(st, node, name, w)
                pages.release([w])
            else:
                st.records.setdefault(name, {"form": "Gather", "init": name, "transposed": False,
                                             "dtype": "float32", "scheme": ts.scheme})
    _drop_unused_initializers(st.graph)
    # A planned matrix the exporter used in a form not recognised above stays float32, and the
    # record says so (the quantization summary shows it; the golden reference keeps it fp32).
    for name, ts in plan.items():
        init = st.graph.initializers.get(name)
        if name not in st.records and init is not None and len(init.shape or ()) == 2:
            st.records[name] = {"form": "unrecognised", "init": name, "transposed": False,
                                "dtype": "float32", "scheme": "fp32", "planned": ts.scheme}
    model.metadata_props[WEIGHTS_KEY] = json.dumps(st.records, sort_keys=True)
    return st.records


def _gather_block_quantized(st: _Store, node: "ir.Node", name: str, w: np.ndarray) -> None:
    import onnx_ir as ir

    nb, vals = st.nbits(name, w)
    k_blocks = nb.data.shape[1]
    data = ir.node("Reshape", [vals[0], _const_init(st.graph, f"{name}.qweight_2d_shape",
                                                    np.array([nb.n, -1], np.int64))],
                   name=f"{name}/Reshape")
    st.graph.insert_before(node, data)
    inputs = [data.outputs[0], node.inputs[1], vals[1]] + ([vals[2]] if len(vals) > 2 else [])
    gbq = ir.node("GatherBlockQuantized", inputs, domain=MS, name=f"{name}/GatherBlockQuantized",
                  attributes={"bits": nb.bits, "block_size": nb.block, "gather_axis": 0,
                              "quantize_axis": 1})
    out = gbq.outputs[0]
    if k_blocks * nb.block != nb.k:  # a per-channel block padded past K: cut the padding off
        st.graph.insert_before(node, gbq)
        zero = _const_init(st.graph, f"{name}.slice_start", np.array([0], np.int64))
        end = _const_init(st.graph, f"{name}.slice_end", np.array([nb.k], np.int64))
        axis = _const_init(st.graph, f"{name}.slice_axis", np.array([-1], np.int64))
        sl = ir.node("Slice", [out, zero, end, axis], name=f"{name}/Slice")
        _replace(st.graph, node, sl)
    else:
        _replace(st.graph, node, gbq)
    st.records[name]["gather"] = "GatherBlockQuantized"


def _replace(graph: "ir.Graph", old: "ir.Node", new: "ir.Node") -> None:
    """Put `new` where `old` is; `new`'s single output takes over the old output's uses and name."""
    graph.insert_before(old, new)
    old_out, new_out = old.outputs[0], new.outputs[0]
    new_out.shape, new_out.type = old_out.shape, old_out.type
    old_out.replace_all_uses_with(new_out, replace_graph_outputs=True)
    name = old_out.name
    graph.remove(old, safe=True)
    new_out.name = name


def _drop_unused_initializers(graph: "ir.Graph") -> None:
    """Remove the weight Transposes and initializers the rewritten matrices no longer read."""
    for node in reversed(list(graph)):
        dead = not any(o.uses() or o.is_graph_output() for o in node.outputs)
        if node.op_type == "Transpose" and dead:
            graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]


def narrow_floats(model: "ir.Model", records: dict[str, dict[str, Any]]) -> None:
    """Store fp16/bf16-planned weights in 16 bits with a Cast to float32 after them (in place).

    Runs after the optimizers: the arithmetic stays float32 and exact with respect to the stored
    values (onnxruntime folds the Cast when the session loads; the file keeps the 16-bit copy).
    """
    import onnx_ir as ir

    graph = model.graph
    for name, rec in records.items():
        if rec["scheme"] not in ("fp16", "bf16") or "init" not in rec:
            continue
        value = graph.initializers[rec["init"]]
        arr = value.const_value.numpy()
        dtype = ir.DataType.FLOAT16 if rec["scheme"] == "fp16" else ir.DataType.BFLOAT16
        if dtype == ir.DataType.FLOAT16:
            narrow = ir.tensor(arr.astype(np.float16), name=value.name)
        else:
            import ml_dtypes

            narrow = ir.tensor(arr.astype(ml_dtypes.bfloat16), name=value.name)
        users = list(value.uses())
        value.const_value = narrow
        value.type = ir.TensorType(dtype)
        cast = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT}, name=f"{name}/Cast")
        cast.outputs[0].name = f"{value.name}.float"
        cast.outputs[0].shape, cast.outputs[0].type = value.shape, ir.TensorType(ir.DataType.FLOAT)
        first = min((u.node for u in users), key=lambda n: _index(graph, n))
        graph.insert_before(first, cast)
        for use in users:
            use.node.replace_input_with(use.idx, cast.outputs[0])
        rec["dtype"] = "float16" if dtype == ir.DataType.FLOAT16 else "bfloat16"
    model.metadata_props[WEIGHTS_KEY] = json.dumps(records, sort_keys=True)


def _index(graph: "ir.Graph", node: "ir.Node") -> int:
    for i, n in enumerate(graph):
        if n is node:
            return i
    raise ValueError("node not in graph")


# -- reading back ---------------------------------------------------------------------------------
def records_of(model: "ir.Model") -> dict[str, dict[str, Any]]:
    """The storage records written by `store_weights` (empty when absent)."""
    raw = model.metadata_props.get(WEIGHTS_KEY)
    return json.loads(raw) if raw else {}


def _released(tensors: tuple[Any, ...], convert: Any) -> np.ndarray:
    """`convert(*arrays)` of stored tensors, then each external tensor's memory map closed: a
    touched mapped page stays resident while mapped (the whole .data file, 0.9 GB at 1B, for the
    rest of the compile). `convert` must return new arrays, not views."""
    try:
        return convert(*(None if t is None else t.numpy() for t in tensors))
    finally:
        for t in tensors:
            if t is not None and hasattr(t, "release"):
                t.release()


def read_weights(model: "ir.Model", lazy: bool = False) -> Mapping[str, np.ndarray]:
    """The weights exactly as the file stores them, dequantized to float32 [out, in] arrays.

    Only tensors stored other than fp32 are returned (the golden check keeps the rest). With
    `lazy`, a `LazyWeights` that keeps the stored (compact) arrays and dequantizes a tensor each
    time it is read: the golden check's exact reference then never holds them all in fp32.
    """
    inits = model.graph.initializers
    loaders: dict[str, Any] = {}
    nbytes = 0
    for name, rec in records_of(model).items():
        if rec["form"] == "MatMulNBits":
            zp = rec["zero_points"]
            # `rows`: this matrix's rows of a packed one (q/k/v packed by fusions.py)
            rows = slice(*rec["rows"]) if rec.get("rows") else slice(None)
            stored = (inits[rec["qweight"]].const_value, inits[rec["scales"]].const_value,
                      None if zp is None else inits[zp].const_value)
            shape = dict(bits=rec["bits"], block=rec["block_size"], n=rec["N"], k=rec["K"])
            loaders[name] = lambda t=stored, r=rows, kw=shape: _released(
                t, lambda *a: unpack_nbits(*(None if x is None else x[r] for x in a), **kw))
            nbytes += 4 * rec["N"] * rec["K"]
        elif rec["dtype"] != "float32":
            init, transposed = inits[rec["init"]].const_value, rec["transposed"]
            loaders[name] = lambda t=init, tr=transposed: _released((t,), lambda a: (
                np.ascontiguousarray((a.T if tr else a).astype(np.float32))))
            nbytes += 4 * init.size
    if lazy:
        from omnic.runtime.lazy_weights import LazyWeights

        return LazyWeights(loaders, nbytes)
    return {name: load() for name, load in loaders.items()}


def summary(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of matrices per storage form, e.g. {"MatMulNBits int4 block 32 symmetric": 12}."""
    forms: dict[str, int] = {}
    for rec in records.values():
        if rec["form"] == "MatMulNBits":
            key = (f"MatMulNBits int{rec['bits']} block {rec['block_size']} "
                   f"{'symmetric' if rec['symmetric'] else 'asymmetric'}"
                   f"{' per-channel' if rec['group_size'] is None else ''}")
            if rec.get("gather"):
                key += " + GatherBlockQuantized"
        else:
            key = f"{rec['form']} {rec['dtype']}"
        forms[key] = forms.get(key, 0) + 1
    return {"forms": dict(sorted(forms.items())), "matrices": len(records)}
