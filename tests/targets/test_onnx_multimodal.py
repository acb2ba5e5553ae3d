"""embedding.onnx stores the embedding as model.onnx does: its output is the scheme's reference
(omnic.quant.reference.fake_quantize) of embed.weight, gathered and scaled.

Tolerance 1e-6: a gather of stored values times a power-of-two-free scale, one float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torch = pytest.importorskip("torch")

from tiny_specs import make_resolved_spec  # noqa: E402

TINY = {"vocab_size": 300, "d_model": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 32, "tie_embeddings": True,
        "scale_embeddings": True}


@pytest.mark.parametrize("scheme,group", [("fp32", None), ("fp16", None), ("int8", None),
                                          ("int4", 32)])
def test_embedding_onnx_storage(tmp_path, scheme, group):
    import onnx_ir as ir
    import onnxruntime as ort

    from omnic.model import build_model
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.quant.reference import fake_quantize
    from omnic.targets.onnx import export as onnx_export
    from omnic.targets.onnx import multimodal as onnx_multimodal
    from omnic.targets.onnx import quant as onnx_quant
    from omnic.targets.onnx.target import OnnxTarget

    quant = {"weights": {"scheme": "int4", "group_size": 32},
             "overrides": [{"match": {"role": "embedding"}, "scheme": scheme,
                            "group_size": group}]}
    spec = make_resolved_spec(TINY, quantization=quant)
    decoder = build_model(spec, Path("."))
    model = onnx_multimodal._export_embedding(decoder, 21)
    graph, _ = OnnxTarget().transform(Program(spec=spec, spec_dir=Path("."), decoder=decoder,
                                               quant_plan=tensor_schemes(spec)),
                                        model)
    path = tmp_path / onnx_multimodal.EMBEDDING_FILE
    onnx_export.save(model, path)
    ops = onnx_export.op_histogram(ir.load(path))
    if scheme in ("int8", "int4"):
        assert ops.get("com.microsoft::GatherBlockQuantized") == 1
    else:
        assert ops.get("Gather") == 1
    assert graph.records["embed.weight"]["scheme"] == scheme
    ids = np.array([[0, 5, 256, 299, 5, 17]], np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["inputs_embeds"], {"input_ids": ids})
    w = decoder.embed.weight.numpy()
    if scheme == "fp16":
        table = w.astype(np.float16).astype(np.float32)
    elif scheme == "fp32":
        table = w
    else:
        table = fake_quantize(w, scheme, group, True)
    expect = table[ids] * np.float32(8.0)  # Gemma's sqrt(d_model) embedding scale
    assert got.shape == (1, 6, 64)
    np.testing.assert_allclose(got, expect, atol=1e-6, rtol=0)
    if scheme != "fp32":  # the stored table is not the fp32 one (the test would see it)
        assert np.abs(table - w).max() > 1e-5
    np.testing.assert_allclose(onnx_quant.read_weights(ir.load(path)).get("embed.weight", w),
                               table, atol=1e-7)
