"""ExecuTorch variants: the whole model in fp16 on XNNPACK, and the Core ML delegate.

fp16 computes weights, activations and the KV cache in half precision, so it is compared with
the fp32-compute reference built from its stored (fp16-rounded) weights by NMSE 1e-4, the
tolerance table's fp16 row (unit roundoff 4.9e-4 per op). The Core ML delegate lowers on Linux
(coremltools converts anywhere) but this runtime has no Core ML backend: its load must say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import NotRunnable, get_target  # noqa: E402

pytestmark = pytest.mark.slow

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 300, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": False}
PROMPT = [int(t) for t in np.random.default_rng(3).integers(0, 256, 16)]


def make_spec(quant: dict, backend: str) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": f"tiny-{backend}", "device": DEVICE, "model": TINY,
        "quantization": quant, "targets": {"executorch": {"backend": backend}}})


@pytest.fixture(scope="module")
def decoder():
    return build_model(make_spec({}, "xnnpack"), Path("."))


def test_fp16_program(decoder, tmp_path):
    spec = make_spec({"weights": {"scheme": "fp16"}}, "xnnpack")
    target = get_target("executorch")
    program = Program(spec, Path("."), decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "executorch")
    assert artifact.precision == "fp16" and artifact.details["compute_dtype"] == "float16"
    assert artifact.signature["state"]["v_cache_0"]["dtype"] == "float16"
    assert "linear" not in artifact.details["not_delegated"]
    # the stored weights are the fp32 ones rounded to fp16, norms included
    state = decoder.state_dict()
    assert set(artifact.reference_weights) == set(state)
    for name, w in artifact.reference_weights.items():
        np.testing.assert_array_equal(w, state[name].numpy().astype(np.float16).astype(np.float32))
    ref = decoder.__class__(decoder.config)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in artifact.reference_weights.items()})
    runner = target.load(artifact, tmp_path)
    got_ids, got = greedy(runner, PROMPT, 8)
    want_ids, want = greedy(TorchRunner(ref.eval()), PROMPT, 8)
    assert float(((got - want) ** 2).mean() / (want**2).mean()) < 1e-4
    assert got_ids == want_ids


def test_coreml_delegate_lowers_but_does_not_run_here(decoder, tmp_path):
    pytest.importorskip("coremltools")
    spec = make_spec({}, "coreml")
    target = get_target("executorch")
    assert target.check(spec) == []
    program = Program(spec, Path("."), decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "executorch")
    d = artifact.details
    assert d["backend"] == "coreml" and d["delegate_partitions"] == 1
    assert d["not_delegated"] == {} and d["delegated_ops"] > 0  # the whole graph is Core ML's
    assert d["metadata"]["enable_dynamic_shape"] is False  # one token per call, as export_llm
    assert artifact.signature["inputs"]["tokens"]["shape"] == [1, 1]
    assert artifact.precision == "fp16" and d["coreml"]["compute_precision"] == "fp16"
    params = sum(t.numel() for t in decoder.state_dict().values())
    assert (tmp_path / artifact.path).stat().st_size > 0.9 * 2 * params  # fp16 weights inside
    with pytest.raises(NotRunnable, match="CoreMLBackend"):
        target.load(artifact, tmp_path)
    assert d["deterministic"] is False  # Core ML's embedded package varies between lowerings
    int4 = make_spec({"weights": {"scheme": "int4", "group_size": 32}}, "coreml")
    assert [p.field for p in target.check(int4)] == ["quantization.weights.scheme"]


def test_qwen_like_int8_program(tmp_path):
    """q/k/v biases, q/k norms, a sliding window on even layers, an untied head; int8 per channel
    (8da8w) linears and an asymmetric group-wise int8 embedding (embedding_byte with zero points).
    Compared with its exact reference by NMSE 5e-4, as the int4 program."""
    model = {**TINY, "qkv_bias": True, "qk_norm": True,
             "sliding_window": {"size": 8, "layers": "even"}}
    quant = {"weights": {"scheme": "int8"},
             "overrides": [{"match": {"role": "embedding"}, "scheme": "int8", "group_size": 16,
                            "symmetric": False}]}
    spec = ResolvedSpec.model_validate({
        "omnic": 1, "name": "qwenish", "device": DEVICE, "model": model, "quantization": quant,
        "targets": {"executorch": {}}})
    target = get_target("executorch")
    assert target.check(spec) == []
    decoder = build_model(spec, Path("."))
    program = Program(spec, Path("."), decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "executorch")
    assert artifact.precision == "8da8w"
    assert artifact.quantization["forms"]["embed.weight"] == "embedding_8bit_g16"
    assert artifact.quantization["forms"]["lm_head.weight"] == "8da8w"
    assert "linear" not in artifact.details["not_delegated"]
    state = decoder.state_dict()
    ref = decoder.__class__(decoder.config)
    state.update({k: torch.from_numpy(v) for k, v in artifact.reference_weights.items()})
    ref.load_state_dict(state)
    runner = target.load(artifact, tmp_path)
    prompt = PROMPT + PROMPT[:6]  # past the window of 8
    got_ids, got = greedy(runner, prompt, 8)
    want_ids, want = greedy(TorchRunner(ref.eval()), prompt, 8)
    assert float(((got - want) ** 2).mean() / (want**2).mean()) < 5e-4
    assert got_ids == want_ids
