"""The per-target byte model (omnic.targets.footprint) against files and hand counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnic.quant import ggml
from omnic.targets.footprint import (
    CODE_SUFFIXES, artifact_bytes, byte_tokenizer_json_bytes, measured_bytes, plan_artifacts,
)
from omnic.compiler.validate import load_resolved

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pocket():
    return load_resolved(REPO / "specs" / "mobile_2gb.yaml")


def test_ggml_block_sizes_are_gguf_py_s():
    gguf = pytest.importorskip("gguf")
    for name, (block, size) in ggml.BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (block, size), name


@pytest.mark.parametrize("vocab", [259, 300, 1000, 4096])
def test_byte_tokenizer_json_size(tmp_path, vocab):
    pytest.importorskip("tokenizers")
    from omnic.tokenizer import ByteTokenizer

    ByteTokenizer(vocab).save(tmp_path)
    assert (tmp_path / "tokenizer.json").stat().st_size == byte_tokenizer_json_bytes(vocab)


def test_pocket_chat_weights_by_hand(pocket):
    """Each backend's weight storage of pocket-chat, counted from the formats by hand."""
    V, d, L, F, kv = 4096, 384, 6, 1024, 128
    int4_params = L * (2 * d * d + 2 * kv * d + 3 * d * F)
    norms = (2 * L + 1) * d * 4
    groups = int4_params // 32
    weights = {a.target: a.lines["weights"] for a in plan_artifacts(pocket, REPO / "specs")}
    # GGUF: Q4_0 18 B per 32, the int8 embedding as Q8_0 34 B per 32
    assert weights["gguf"] == groups * 18 + V * d // 32 * 34 + norms
    # ONNX: MatMulNBits with float32 scales; the per-channel int8 embedding as blocks of 128
    # (the largest power of two dividing 384), each repeating the row's float32 scale
    assert weights["onnx"] == int4_params // 2 + groups * 4 + V * d + V * 3 * 4 + norms
    # ExecuTorch: bf16 block scales; the tied embedding twice (int8 table with fp32 scale and
    # int8 zero point per row, and the 8da8w lm_head with fp32 scales)
    assert weights["executorch"] == (int4_params // 2 + groups * 2 + (V * d + V * 5)
                                     + (V * d + V * 4) + norms)
    # Core ML: fp16 scales, norms at the fp16 compute precision
    assert weights["coreml"] == int4_params // 2 + groups * 2 + V * d + V * 2 + norms // 2
    # TVM: fp16 scales, norms fp32
    assert weights["tvm"] == int4_params // 2 + groups * 2 + V * d + V * 2 + norms


def test_tvm_compiled_code_is_excluded(tmp_path, pocket):
    tvm = artifact_bytes(pocket, "tvm")
    assert tvm.excluded == CODE_SUFFIXES
    (tmp_path / "decoder.so").write_bytes(b"x" * 100)
    (tmp_path / "decoder.aarch64-linux-android.tar").write_bytes(b"x" * 50)
    (tmp_path / "decoder.params.safetensors").write_bytes(b"x" * 7)
    assert measured_bytes(tmp_path, tvm.excluded) == (7, 150)


def test_a_target_that_cannot_carry_the_spec(pocket):
    q = pocket.quantization.model_copy(update={"weights": pocket.quantization.weights.model_copy(
        update={"group_size": 128})})
    a = artifact_bytes(pocket.model_copy(update={"quantization": q}), "gguf")
    assert not a.carried and "group_size 128" in a.reason and a.bytes == 0


def test_plan_lists_every_enabled_target(pocket):
    from omnic.compiler.plan import plan_memory

    plan = plan_memory(pocket, artifacts=True, spec_dir=str(REPO / "specs"))
    assert [a["target"] for a in plan.artifacts] == pocket.targets.enabled()
    assert all(a["bytes"] == sum(a["lines"].values()) for a in plan.artifacts)
    assert plan_memory(pocket).artifacts == []  # only on request (validation plans many devices)
