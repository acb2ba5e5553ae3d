"""Core ML lowering of tiny decoders: package structure, compression, stored weights, determinism.

This host cannot execute Core ML (`load` must say so); everything else about the artifact is
checked by re-opening it with coremltools and comparing with numbers derived here from the spec
and the fp32 weights, independently of the target's code.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from omnic.spec import ResolvedSpec

pytestmark = pytest.mark.slow

MODEL = {
    "vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
    "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": True,
}
# int4 blocks of 32 everywhere, the (tied) embedding int8 per output channel.
QUANT = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True},
         "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}


def tiny_spec(model: dict | None = None, quantization: dict | None = None,
              coreml: dict | None = None) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny",
        "device": {"name": "phone", "memory_budget_mb": 1400, "bandwidth_gbps": 12.0,
                   "os": "ios", "os_version": "18"},
        "model": {**MODEL, **(model or {})},
        "quantization": QUANT if quantization is None else quantization,
        "targets": {"coreml": coreml or {}},
    })


def lower(spec: ResolvedSpec, build: Path):
    from omnic.model import build_model
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.targets.base import get_target

    torch.set_num_threads(1)
    decoder = build_model(spec, build)
    start = time.perf_counter()
    program = Program(spec, build, decoder, quant_plan=tensor_schemes(spec))
    [artifact] = get_target("coreml").lower(program, build / "coreml")
    seconds = time.perf_counter() - start
    print(f"coreml lower: {seconds:.1f} s, {artifact.details['bytes']} bytes, {artifact.precision}")
    return decoder, artifact


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = tiny_spec()
    build = tmp_path_factory.mktemp("coreml_build")
    decoder, artifact = lower(spec, build)
    return spec, decoder, build, artifact


def open_program(package: Path):
    """The saved MIL program, loaded with coremltools' own loader (not the target's helper)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    spec_pb = ct.utils.load_spec(str(package))
    return spec_pb, load(spec_pb, spec_pb.specificationVersion,
                         str(package / "Data/com.apple.CoreML/weights"))


def ops_of(program, op_type: str) -> list:
    return [op for op in program.functions["main"].operations if op.op_type == op_type]


# -- structure -------------------------------------------------------------------------------


def test_package_structure_conforms(built):
    from omnic.targets.coreml.target import structural_check

    spec, _, build, artifact = built
    package = build / artifact.path
    assert artifact.path == "coreml/tiny.mlpackage"
    for part in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel",
                 "Data/com.apple.CoreML/weights/weight.bin"):
        assert (package / part).is_file(), part
    assert structural_check(artifact, build, spec) == []

    cache = {"dtype": "float16", "shape": [1, 2, 64, 16]}  # [batch, kv heads, context, head_dim]
    assert artifact.signature == {
        "inputs": {"input_ids": {"dtype": "int32", "shape": [1, "1..64"]},
                   "input_pos": {"dtype": "int32", "shape": ["1..64"]}},
        "outputs": {"logits": {"dtype": "float32", "shape": [1, "T", 320]}},
        "states": {f"{kv}_cache_{i}": cache for kv in "kv" for i in range(2)},
    }
    spec_pb, program = open_program(package)
    assert spec_pb.specificationVersion == 9  # iOS18
    assert [s.name for s in spec_pb.description.state] == [
        "k_cache_0", "k_cache_1", "v_cache_0", "v_cache_1"]
    # The histogram is the saved program's: recount it from the protobuf here.
    block = spec_pb.mlProgram.functions["main"].block_specializations["CoreML8"]
    counts: dict[str, int] = {}
    for op in block.operations:
        counts[op.type] = counts.get(op.type, 0) + 1
    assert artifact.op_histogram == dict(sorted(counts.items()))
    assert counts["write_state"] == 4
    # fp16 compute: every matmul-like op computes in fp16.
    from coremltools.converters.mil.mil import types

    assert all(op.outputs[0].dtype == types.fp16
               for op in ops_of(program, "linear") + ops_of(program, "matmul"))
    d = artifact.details
    assert (d["deployment_target"], d["compute_units"], d["compute_precision"]) == \
        ("iOS18", "cpu_and_ne", "fp16")
    assert d["state_bytes"] == 4 * 2 * 64 * 16 * 2
    assert d["bytes"] == sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def test_int4_blocks_and_int8_channels_are_stored(built):
    from coremltools.converters.mil.mil import types

    _, decoder, build, artifact = built
    _, program = open_program(build / artifact.path)
    compressed = ops_of(program, "constexpr_blockwise_shift_scale")
    assert len(compressed) == 2 * 7 + 1  # 7 matrices per layer + the tied embedding
    assert artifact.op_histogram["constexpr_blockwise_shift_scale"] == 15
    by_dtype: dict[str, list] = {}
    for op in compressed:
        by_dtype.setdefault(types.builtin_to_string(op.data.dtype), []).append(op)
    assert sorted((k, len(v)) for k, v in by_dtype.items()) == [("int4", 14), ("int8", 1)]
    for op in by_dtype["int4"]:
        rows, cols = op.data.val.shape
        assert op.scale.val.shape == (rows, cols // 32)  # one scale per 32 inputs
        assert op.offset is None  # symmetric
    [emb] = by_dtype["int8"]
    assert emb.data.val.shape == (320, 64) and emb.scale.val.shape == (320, 1)
    assert artifact.precision == "int4_g32"
    # 4-bit storage: the weight blob is far below the fp16 size of the same weights.
    fp16_bytes = 2 * sum(v.numel() for v in decoder.state_dict().values())
    assert artifact.details["weight_bin_bytes"] < 0.45 * fp16_bytes


def _blocks(w: np.ndarray, g: int) -> np.ndarray:
    return w.reshape(w.shape[0], -1, g)


def test_reference_weights_are_what_coreml_stores(built):
    """Recompute coremltools' documented linear_symmetric formula independently and compare."""
    from omnic.quant.reference import fake_quantize

    _, decoder, _, artifact = built
    ref = artifact.reference_weights
    state = {k: v.float().numpy() for k, v in decoder.state_dict().items()}
    assert set(ref) == set(state)
    for name, w in state.items():
        got = ref[name]
        assert got.dtype == np.float32 and got.shape == w.shape
        w16 = w.astype(np.float16)  # quantized after the fp16 cast, in fp16 arithmetic
        if w.ndim == 1:  # norms: stored fp16
            np.testing.assert_array_equal(got, w16.astype(np.float32))
            continue
        g = 64 if name == "embed.weight" else 32  # per channel = one block per row
        levels = 127 if name == "embed.weight" else 7  # linear_symmetric: [-127,127] / [-7,7]
        # ref: coremltools/optimize/_utils.py quantize_weight_by_dtype: scale = (max - min) /
        # (q_max - q_min) with min = -max|w|, q = clip(round(w / scale)), all in the weight's
        # dtype; constexpr_blockwise_shift_scale dequantizes q * scale in the scale's dtype.
        amax = np.abs(_blocks(w16, g)).max(-1, keepdims=True)
        scale = (amax - (-amax)) / np.float16(2 * levels)
        q = np.clip(np.round(_blocks(w16, g) / scale), -levels, levels)
        expect = (q.astype(np.float16) * scale).astype(np.float32)
        np.testing.assert_array_equal(_blocks(got, g), expect, err_msg=name)
        scale = scale.astype(np.float32)
        # Every block uses at most 2 * levels + 1 distinct values.
        assert max(len(np.unique(b)) for b in _blocks(got, g).reshape(-1, g)) <= 2 * levels + 1
        if name != "embed.weight":
            # Within one Core ML quantization step of omnic's own int4 g32 reference (its levels
            # are [-8, 7] with scale m/-8, so the two grids differ by design).
            omnic = fake_quantize(w, "int4", 32, True)
            assert np.all(np.abs(_blocks(got - omnic, g)) <= scale * 1.001 + 1e-7), name


def test_structural_check_fails_on_wrong_expectations(built):
    from omnic.targets.coreml.target import structural_check

    spec, _, build, artifact = built
    longer = spec.model_copy(update={
        "model": spec.model.model_copy(update={"context_length": 128})})
    failures = structural_check(artifact, build, longer)
    assert any(f.startswith("states.k_cache_0") for f in failures), failures
    assert any(f.startswith("inputs.input_ids") for f in failures), failures

    g64 = spec.model_copy(update={"quantization": spec.quantization.model_copy(update={
        "weights": spec.quantization.weights.model_copy(update={"group_size": 64})})})
    failures = structural_check(artifact, build, g64)
    assert any("layers.0.attn.q.weight: scales" in f for f in failures), failures

    unquantized = spec.model_copy(update={"quantization": ResolvedSpec.model_fields[
        "quantization"].annotation()})
    failures = structural_check(artifact, build, unquantized)
    assert any("compressed weight ops, the plan quantizes 0" in f for f in failures), failures

    units = spec.model_copy(update={"targets": spec.targets.model_copy(update={
        "coreml": spec.targets.coreml.model_copy(update={"compute_units": "all"})})})
    assert structural_check(artifact, build, units) == [
        "metadata com.omnic.compute_units='cpu_and_ne', spec says 'all'"]

    tampered = replace(artifact, op_histogram={**artifact.op_histogram, "softmax": 99})
    [failure] = structural_check(tampered, build, spec)
    assert "op histogram differs" in failure and "'softmax': (2, 99)" in failure

    missing = replace(artifact, path="coreml/nothing.mlpackage")
    assert structural_check(missing, build, spec) == [
        "coreml/nothing.mlpackage: not an .mlpackage (no Manifest.json)"]


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML runs on macOS")
def test_load_needs_macos(built):
    from omnic.targets.base import NotRunnable, get_target

    _, _, build, artifact = built
    with pytest.raises(NotRunnable, match="needs macOS"):
        get_target("coreml").load(artifact, build)


def _digest(package: Path) -> dict[str, str]:
    return {p.relative_to(package).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package.rglob("*")) if p.is_file()}


def test_lowering_is_deterministic(built, tmp_path):
    spec, _, build, artifact = built
    _, again = lower(spec, tmp_path)
    assert _digest(tmp_path / again.path) == _digest(build / artifact.path)
    assert again.op_histogram == artifact.op_histogram and again.details == artifact.details


def test_moe_sliding_window_fp32_compute(tmp_path):
    """MoE (dense top-k routing), Gemma-2 style sliding window on even layers (ring states),
    soft-caps and qk-norm all convert; fp32 compute keeps fp32 weights (no reference weights
    needed)."""
    from omnic.targets.coreml.target import structural_check

    spec = tiny_spec(model={"moe": {"experts": 4, "top_k": 2},
                            "sliding_window": {"size": 8, "layers": "even"},
                            "qk_norm": True, "attn_softcap": 50.0, "final_softcap": 30.0},
                     quantization={}, coreml={"compute_precision": "fp32", "compute_units": "all"})
    decoder, artifact = lower(spec, tmp_path)
    assert structural_check(artifact, tmp_path, spec) == []
    assert artifact.reference_weights is None
    assert artifact.precision == "fp16"  # fp16 KV states even at fp32 compute
    hist = artifact.op_histogram
    assert "constexpr_blockwise_shift_scale" not in hist
    assert hist["topk"] == 2  # one router per layer
    assert hist["tanh"] == 2 + 1  # the attention soft-cap in each layer, the final soft-cap
    # causal & window & slot held: one mask over [ring | new keys], shared by the sliding layers
    assert hist["logical_and"] == 2
    # layer 0 slides over 8 tokens: its states are rings of 8 slots; layer 1's hold the context
    states = artifact.signature["states"]
    assert states["k_cache_0"]["shape"][2] == states["v_cache_0"]["shape"][2] == 8
    assert states["k_cache_1"]["shape"][2] == spec.model.context_length


def test_int4_fp16_ring_caches_lower_and_conform(tmp_path):
    """Sliding layers' rings at fp16 compute: coremltools 9.0's canonicalize_inplace_pattern
    aborts on their update (so it is skipped for such models); the package still conforms, each
    ring state [1, kv, window, hd] read and written once."""
    from omnic.targets.coreml.structure import structural_check

    spec = tiny_spec({"n_layers": 3, "layer_pattern": "2 sliding : 1 full",
                      "sliding_window": {"size": 8}, "ffn": {"kind": "geglu", "hidden": 128}},
                     coreml={"compute_precision": "fp16"})
    _, artifact = lower(spec, tmp_path)
    assert structural_check(artifact, tmp_path, spec) == []
    states = artifact.signature["states"]
    assert [states[f"k_cache_{i}"]["shape"][2] for i in range(3)] == [8, 8, 64]
