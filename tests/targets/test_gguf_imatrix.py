"""GGUF K-quants rounded with an importance matrix by llama.cpp's own quantizer function.

References: llama.cpp's `llama_model_quantize` for the bytes without an importance, and gguf-py's
dequantizer (independent of the quantizer) for the weighted error with one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
# K-quants work on rows of 256
WIDE = {"vocab_size": 512, "d_model": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 512}, "context_length": 64}


def _spec(file_type: str) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "wide", "device": DEVICE, "model": WIDE,
        "quantization": {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True}},
        "targets": {"gguf": {"file_type": file_type}}})


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    """The same decoder as an F32 GGUF and as llama.cpp's Q4_K_M, and an importance per
    matrix (heavy-tailed over the input columns, as real activations are)."""
    decoder = build_model(_spec("F32"), Path("."))
    root = tmp_path_factory.mktemp("gguf-imatrix")
    files = {}
    for ft in ("F32", "Q4_K_M"):
        spec = _spec(ft)
        program = Program(spec, Path("."), decoder, quant_plan=tensor_schemes(spec))
        (artifact,) = get_target("gguf").lower(program, root / ft)
        files[ft] = root / ft / Path(artifact.path).name
    rng = np.random.default_rng(0)
    importance = {n: rng.lognormal(0, 1.5, p.shape[1]).astype(np.float32)
                  for n, p in decoder.named_parameters() if p.ndim == 2 and "embed" not in n}
    return decoder, files, importance, root


def _matrices(path: Path) -> dict:
    from gguf import GGMLQuantizationType, GGUFReader

    return {t.name: t for t in GGUFReader(path).tensors
            if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)}


def test_without_importance_ggml_quantize_chunk_gives_llama_model_quantize_bytes(lowered):
    from omnic.targets.gguf.imatrix import requantize

    _, files, _, root = lowered
    copy = root / "again.gguf"
    shutil.copy(files["Q4_K_M"], copy)
    names = list(_matrices(files["Q4_K_M"]))
    assert len(names) >= 14
    done = requantize(files["F32"], copy, {n: None for n in names})
    assert sorted(done) == sorted(names)
    assert copy.read_bytes() == files["Q4_K_M"].read_bytes()


def test_with_importance_the_weighted_error_is_lower_on_every_matrix(lowered):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from omnic.targets.gguf.imatrix import requantize

    _, files, importance, root = lowered
    weighted = root / "weighted.gguf"
    shutil.copy(files["Q4_K_M"], weighted)
    # every GGUF matrix gets the importance of a same-width omnic matrix (any positive weighting
    # will do: the claim is that ggml's search honours the weighting it is given)
    by_width = {v.shape[0]: v for v in importance.values()}
    plain = _matrices(files["Q4_K_M"])
    imp = {n: by_width[int(t.shape[0])] for n, t in plain.items()}
    assert requantize(files["F32"], weighted, imp)
    source = {t.name: np.asarray(t.data, np.float32) for t in GGUFReader(files["F32"]).tensors}
    got = _matrices(weighted)
    for name, t in plain.items():
        w = source[name]
        err = {}
        for label, tensor in (("plain", t), ("weighted", got[name])):
            deq = dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(w.shape)
            err[label] = float((imp[name] * (deq - w) ** 2).sum())
        assert err["weighted"] < err["plain"], (name, t.tensor_type.name, err)


def test_the_target_rounds_with_the_programs_importance_and_reads_back_what_it_stored(lowered):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    decoder, files, importance, root = lowered
    spec = _spec("Q4_K_M")
    program = Program(spec, Path("."), decoder, quant_plan=tensor_schemes(spec),
                      importance=importance)
    (artifact,) = get_target("gguf").lower(program, root / "with-importance")
    path = root / "with-importance" / Path(artifact.path).name
    assert artifact.details["imatrix_tensors"] == len(importance)
    assert path.read_bytes() != files["Q4_K_M"].read_bytes()
    # the exact reference is what the file stores (dequantized by gguf-py here)
    stored = {t.name: t for t in GGUFReader(path).tensors}
    deq = dequantize(np.asarray(stored["blk.0.ffn_down.weight"].data),
                     stored["blk.0.ffn_down.weight"].tensor_type)
    ref = np.asarray(artifact.reference_weights["layers.0.ffn.down.weight"])
    np.testing.assert_array_equal(deq.reshape(ref.shape), ref)
