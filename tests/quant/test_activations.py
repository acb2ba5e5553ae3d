"""The int8 activation rounding the exact reference applies, against each runtime's own code.

Each kernel's rounding is checked against an independent implementation: gguf-py's port of
llama.cpp's Q8_0 quantizer, PyTorch's quantized_decomposed per-token ops (what ExecuTorch
runs for 8da linears outside XNNPACK), and onnxruntime's MatMulNBits at accuracy_level 4 itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnic.golden.activations import apply, fake_quantize
from omnic.quant.activations import LLAMA_CPP_Q8_0, XNNPACK_QD8, llama_cpp, mlas_int8


def _activations(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows: Gaussian with a few large outliers, as trained models have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, torch.randint(0, k, (3,), generator=g)] *= 30.0
    return x


def test_llama_cpp_q8_0_is_gguf_py_quantize_then_dequantize():
    gguf = pytest.importorskip("gguf")
    x = _activations(8, 256)
    theirs = gguf.quants.dequantize(gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType.Q8_0),
                                    gguf.GGMLQuantizationType.Q8_0)
    ours = fake_quantize(x, LLAMA_CPP_Q8_0).numpy()
    step = np.abs(x.numpy()).reshape(8, -1, 32).max(-1).repeat(32, -1) / 127
    diff = np.abs(ours - theirs)
    # equal except where x / d lands on a rounding boundary (1/d and 127/amax differ by an ulp)
    assert (diff > 1e-6 * step).mean() < 1e-3
    assert (diff <= step * 1.01).all()
    assert not np.allclose(ours, x.numpy(), atol=1e-4)  # it does round


def test_xnnpack_qd8_is_the_per_token_asymmetric_ops():
    from torch.ao.quantization.fx import _decomposed  # noqa: F401 - registers the ops

    ops = torch.ops.quantized_decomposed
    x = _activations(16, 96, seed=1)
    scale, zp = ops.choose_qparams_per_token_asymmetric(x, torch.int8)
    q = ops.quantize_per_token(x, scale, zp, -128, 127, torch.int8)
    theirs = ops.dequantize_per_token(q, scale, zp, -128, 127, torch.int8, torch.float32)
    ours = fake_quantize(x, XNNPACK_QD8)
    step = scale.expand_as(x)
    diff = (ours - theirs).abs()
    assert (diff > 1e-5 * step).float().mean() < 2e-2
    assert (diff <= step * 1.01).all()


def _matmul_nbits(w: np.ndarray, block: int, level: int):
    """One MatMulNBits node (int4, symmetric blocks) on onnxruntime: (run, W dequantized)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from omnic.targets.onnx.quant import MS, pack_nbits, unpack_nbits

    nb = pack_nbits(w, 4, block, True)
    deq = unpack_nbits(nb.data, nb.scales, nb.zero_points, bits=4, block=block, n=nb.n, k=nb.k)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["T", nb.k]))
    inits = [ir.Value(name=n, const_value=ir.tensor(a)) for n, a in
             (("w", nb.data), ("s", nb.scales.astype(np.float32)))]
    node = ir.node("MatMulNBits", [x, *inits], domain=MS, attributes={
        "K": nb.k, "N": nb.n, "bits": 4, "block_size": block, "accuracy_level": level})
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=inits,
                     opset_imports={"": 21, MS: 1})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return (lambda a: sess.run(None, {"x": a})[0]), deq


@pytest.mark.parametrize("block", [32, 128])
def test_mlas_int8_is_what_matmul_nbits_computes_at_accuracy_level_4(block):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    run, deq = _matmul_nbits(w, block, level=4)
    x = _activations(5, 512, seed=3)
    got = run(x.numpy())
    rounded = fake_quantize(x, mlas_int8(block)).numpy() @ deq.T
    plain = x.numpy() @ deq.T
    scale = np.abs(got).max()
    # measured: 4.6e-5 against 1.26 (block 32) and 3.08 (block 128) with float activations:
    # the modelled rounding is float32 roundoff away from onnxruntime, >1000x closer
    assert np.abs(got - rounded).max() < np.abs(got - plain).max() / 1000
    assert np.abs(got - rounded).max() < 1e-4 * scale


def test_llama_cpp_pairs_weight_types_with_its_activation_types():
    assert llama_cpp("Q4_0") == llama_cpp("Q8_0") == LLAMA_CPP_Q8_0
    assert llama_cpp("Q6_K").block == 256
    assert llama_cpp("F32") is None and llama_cpp("F16") is None


def test_apply_rounds_named_linears_and_the_tied_lm_head():
    from omnic.model.config import DecoderConfig
    from omnic.model.modules.decoder import Decoder
    from omnic.runtime.torch_runner import TorchRunner

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=128, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2,
                           head_dim=16, context_length=16, tie_embeddings=True)
    model = Decoder(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    tokens = np.arange(6, dtype=np.int64)

    def logits(m, names):
        apply(m, {n: LLAMA_CPP_Q8_0 for n in names})
        with torch.no_grad():
            return TorchRunner(m, positions=8).forward(tokens)

    import copy

    plain = logits(copy.deepcopy(model), [])
    q_only = logits(copy.deepcopy(model), ["layers.0.attn.q.weight"])
    head = logits(copy.deepcopy(model), ["embed.weight"])
    assert not np.array_equal(plain, q_only) and not np.array_equal(plain, head)
    with pytest.raises(ValueError, match="not the weight of a Linear"):
        apply(copy.deepcopy(model), {"norm.weight": LLAMA_CPP_Q8_0})
