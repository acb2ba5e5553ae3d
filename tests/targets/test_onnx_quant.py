"""ONNX weight packing against onnxruntime's own quantizer and kernels; the ONNX pre-flight check.

No export here: these run in a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from omnic.spec import ResolvedSpec

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _matmul_model(w: np.ndarray):
    """A one-MatMul model y = a @ w.T, the form the exporter gives an nn.Linear."""
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"], name="mm")], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _ort_quantizer(w, bits, block, symmetric):
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    q = MatMulNBitsQuantizer(_matmul_model(w), algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=symmetric, bits=bits))
    q.process()
    model = q.model.model
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return node.op_type, attrs, inits[f"B_Q{bits}"], inits["B_scales"], inits.get("B_zero_points")


def _nibbles(b):
    return np.stack([b & 15, b >> 4], -1).reshape(*b.shape[:-1], -1)


@pytest.mark.parametrize("bits,k,group,symmetric", [
    (4, 96, 32, True), (4, 96, 32, False), (4, 64, 16, False), (4, 128, 128, True),
    (8, 96, 32, False),
])
def test_packing_is_bit_identical_to_onnxruntime_quantizer(bits, k, group, symmetric):
    from omnic.targets.onnx.quant import pack_nbits

    w = np.random.default_rng(bits * k + group).standard_normal((24, k)).astype(np.float32)
    w[3, :group] = 0.0  # an all-zero block: scale 0
    op, attrs, data, scales, zp = _ort_quantizer(w, bits, group, symmetric)
    mine = pack_nbits(w, bits, group, symmetric)
    assert op == "MatMulNBits" and attrs == {"K": k, "N": 24, "bits": bits, "block_size": group}
    np.testing.assert_array_equal(mine.data, data)
    np.testing.assert_array_equal(mine.scales, scales)
    if symmetric:
        assert zp is None and mine.zero_points is None
    else:  # onnxruntime leaves the unused high nibble of an odd block count unspecified
        k_blocks = k // group
        ours = _nibbles(mine.zero_points) if bits == 4 else mine.zero_points
        theirs = _nibbles(zp) if bits == 4 else zp
        np.testing.assert_array_equal(ours[:, :k_blocks], theirs[:, :k_blocks])


def test_int8_symmetric_within_one_step_of_onnxruntime():
    """omnic's symmetric int8 keeps -127..127 (scale max|w|/127); onnxruntime uses m/-128."""
    from omnic.targets.onnx.quant import pack_nbits, unpack_nbits

    w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    _, _, data, scales, _ = _ort_quantizer(w, 8, 32, True)
    theirs = unpack_nbits(data, scales, None, bits=8, block=32, n=16, k=64)
    nb = pack_nbits(w, 8, 32, True)
    ours = unpack_nbits(nb.data, nb.scales, None, bits=8, block=32, n=16, k=64)
    step = np.repeat(np.maximum(nb.scales, np.abs(scales)), 32, axis=1)
    assert np.all(np.abs(ours - theirs) <= step + 1e-7)
    assert not np.array_equal(ours, theirs)  # the conventions really differ


@pytest.mark.parametrize("bits,group,symmetric,k", [
    (4, 32, True, 96), (4, 16, False, 48), (8, 32, True, 96), (8, None, True, 48),
    (8, None, False, 48), (8, None, True, 384), (8, None, False, 200), (8, None, True, 1000),
])
def test_unpack_matches_the_matmulnbits_kernel(bits, group, symmetric, k):
    """What `read_weights` reports is what onnxruntime multiplies with: run MatMulNBits on I."""
    from onnx import TensorProto, helper, numpy_helper

    from omnic.quant.reference import fake_quantize
    from omnic.targets.onnx.quant import pack_nbits, unpack_nbits

    n = 40
    w = np.random.default_rng(1).standard_normal((n, k)).astype(np.float32)
    nb = pack_nbits(w, bits, group, symmetric)
    inits = [numpy_helper.from_array(nb.data, "B"), numpy_helper.from_array(nb.scales, "S")]
    inputs = ["A", "B", "S"]
    if nb.zero_points is not None:
        inits.append(numpy_helper.from_array(nb.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=nb.block)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [k, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, n])], inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    session = ort.InferenceSession(model.SerializeToString())
    kernel = session.run(None, {"A": np.eye(k, dtype=np.float32)})[0].T
    unpacked = unpack_nbits(nb.data, nb.scales, nb.zero_points, bits=bits, block=nb.block, n=n, k=k)
    np.testing.assert_array_equal(unpacked, kernel)
    np.testing.assert_array_equal(unpacked, fake_quantize(w, f"int{bits}", group, symmetric))


def _spec(quantization=None, onnx_opts=None, **extra):
    return ResolvedSpec.model_validate(dict(
        omnic=1, name="chk",
        device=dict(name="host", memory_budget_mb=1024, bandwidth_gbps=10, os="linux",
                    arch="x86_64"),
        model=dict(vocab_size=320, d_model=96, n_layers=2, n_heads=4, n_kv_heads=2,
                   ffn=dict(kind="swiglu", hidden=192), context_length=64),
        quantization=quantization or dict(weights=dict(scheme="int4", group_size=32)),
        targets=dict(onnx=onnx_opts or {}), **extra,
    ))


def check(spec):
    from omnic.targets.base import get_target

    found = get_target("onnx").check(spec)
    assert all(p.target == "onnx" for p in found)
    return found


def test_missing_toolchain_is_a_problem_and_not_runnable(monkeypatch, tmp_path):
    import sys

    from omnic.targets.base import Artifact, NotRunnable, get_target

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` fails
    assert [(p.field, p.message) for p in check(_spec())] == [
        ("targets.onnx", "onnx: onnxscript is missing: install omnic[onnx]")]
    for component in ("decoder", "vision_encoder"):
        with pytest.raises(NotRunnable, match="onnxscript is missing"):
            get_target("onnx").load(Artifact(component, "onnx", "onnx"), tmp_path)


def test_check_accepts_a_good_spec():
    assert check(_spec()) == []
    assert check(_spec(dict(weights=dict(scheme="int8"), overrides=[
        dict(match=dict(role="ffn"), scheme="int4", group_size=16, symmetric=False)]))) == []


def test_check_catches_bad_specs():
    bad_block = check(_spec(dict(weights=dict(scheme="int4", group_size=24))))
    assert [p.field for p in bad_block] == ["quantization.weights.group_size"]
    assert "power-of-two" in bad_block[0].message and "nearest: 16" in bad_block[0].message

    override = dict(weights=dict(scheme="fp32"),
                    overrides=[dict(match=dict(role="ffn"), scheme="int8", group_size=48)])
    in_override = check(_spec(override))
    assert [p.field for p in in_override] == ["quantization.overrides[0].group_size"]
    assert "nearest: 32" in in_override[0].message

    too_big = check(_spec(dict(weights=dict(scheme="int8", group_size=512))))
    assert [p.field for p in too_big] == ["quantization.weights.group_size"]
    assert "nearest: 256" in too_big[0].message

    assert [p.field for p in check(_spec(onnx_opts=dict(opset=17)))] == ["targets.onnx.opset"]
    kv = check(_spec(dict(weights=dict(scheme="fp32"), kv_cache="int8")))
    assert [p.field for p in kv] == ["quantization.kv_cache"] and "nearest: none" in kv[0].message


def test_store_weights_on_a_hand_built_graph():
    """MatMul(x, Transpose(W)) -> MatMulNBits, Gather(E) -> GatherBlockQuantized, any other use of
    a planned matrix (here Gemm) is kept float32 and reported; outputs match the fake-quantized
    numpy computation."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from omnic.quant.reference import fake_quantize
    from omnic.quant.select import TensorScheme
    from omnic.targets.onnx.quant import read_weights, store_weights, summary

    rng = np.random.default_rng(5)
    w, g, e = (rng.standard_normal(s).astype(np.float32) for s in ((24, 64), (24, 64), (50, 64)))
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["x"], axis=0),
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "Wt"], ["y"]),
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        helper.make_node("Gemm", ["x2", "G"], ["z"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 24]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 24])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(g, "G"),
         numpy_helper.from_array(e, "E"), numpy_helper.from_array(np.array([3, 64]), "flat")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model = ir.serde.deserialize_model(proto)
    plan = {"W": TensorScheme("int4", 32, True), "G": TensorScheme("int4", 32, True),
            "E": TensorScheme("int8", None, False)}
    records = store_weights(model, plan)
    assert {n: r["form"] for n, r in records.items()} == {
        "W": "MatMulNBits", "E": "MatMulNBits", "G": "unrecognised"}
    assert records["E"]["gather"] == "GatherBlockQuantized"
    assert summary(records)["forms"]["unrecognised float32"] == 1
    stored = read_weights(model)
    assert set(stored) == {"W", "E"}
    np.testing.assert_array_equal(stored["E"], fake_quantize(e, "int8", None, False))

    ids = np.array([[4, 0, 49]], dtype=np.int64)
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    y, z = session.run(["y", "z"], {"ids": ids})
    x = stored["E"][ids[0]][None]
    np.testing.assert_allclose(y, x @ fake_quantize(w, "int4", 32, True).T, atol=1e-5)
    np.testing.assert_allclose(z, x[0] @ g.T, atol=1e-5)


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (4, 32, False), (8, None, True)])
def test_packing_a_chunk_of_rows_at_a_time_gives_the_whole_matrix_bytes(monkeypatch, bits, group,
                                                                        symmetric):
    from omnic.targets.onnx import quant as oq

    w = np.random.default_rng(3).standard_normal((37, 96)).astype(np.float32)
    whole = oq._pack_rows(w, bits, group, symmetric)
    monkeypatch.setattr(oq, "PACK_CHUNK", 5 * 96)  # 5 rows per call: 8 calls, a short last one
    chunked = oq.pack_nbits(w, bits, group, symmetric)
    np.testing.assert_array_equal(chunked.data, whole.data)
    np.testing.assert_array_equal(chunked.scales, whole.scales)
    if symmetric:
        assert chunked.zero_points is None and whole.zero_points is None
    else:
        np.testing.assert_array_equal(chunked.zero_points, whole.zero_points)
    back = oq.unpack_nbits(chunked.data, chunked.scales, chunked.zero_points, bits=bits,
                           block=chunked.block, n=37, k=96)
    assert 0 < np.abs(back - w).max() < np.abs(w).max() / (3 if bits == 4 else 60)
