"""TVM target: tiny decoders lowered through Relax, run in the Relax VM, compared with PyTorch.

Two builds per session (TVM compiles take ~30-60 s each on this machine):
- `fp32`: a tiny MoE decoder (4 experts, top 2) with sliding-window attention on even layers
  (their caches rings of the window), host only;
- `int4`: a tiny tied-embedding llama stored int4 g32 (layer 1 attention int4 asymmetric g16,
  the embedding int8 per channel), also cross-compiled for aarch64-linux-android.

References: `TorchRunner` on the builder's decoder (fp32), and on a copy holding the artifact's
`reference_weights` (int4). TVM decodes the packed weights exactly (float32 codes times scales)
inside its matmul kernels and only sums in another order, so both comparisons use the fp32 row
of the tolerance table (omnic/golden/tolerances.py: onnxruntime's checkers x10, atol 1e-4 +
rtol 1e-4). The int4 build also makes OpenCL and Metal libraries (checked structurally).
The stored bytes are decoded here with an independent numpy reading of the documented layout.
"""

from __future__ import annotations

import copy
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.quant.reference import fake_quantize  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}
PROMPT = [int(t) for t in np.random.default_rng(3).integers(0, 300, 20)]
STEPS = 10  # prompt 20 + 10 steps runs past the 16-token window
ATOL, RTOL = 1e-4, 1e-4  # tolerances.py ("*", "fp32")

INT4_QUANT = {
    "weights": {"scheme": "int4", "group_size": 32, "symmetric": True},
    "overrides": [
        {"match": {"role": "embedding"}, "scheme": "int8"},
        {"match": {"name": r"layers\.1\.attn\..*"}, "scheme": "int4", "group_size": 16,
         "symmetric": False},
    ],
}


def make_spec(model: dict[str, Any] | None = None, quant: dict[str, Any] | None = None,
              tvm: dict[str, Any] | None = None, **top: Any) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny", "device": DEVICE, "model": {**TINY, **(model or {})},
        "quantization": quant or {"weights": {"scheme": "fp32"}},
        "targets": {"tvm": tvm or {}}, **top})


class Build:
    def __init__(self, spec: ResolvedSpec, root: Path) -> None:
        self.spec = spec
        self.decoder = build_model(spec, Path("."))
        self.root = root
        self.target = get_target("tvm")
        (self.artifact,) = self.target.lower(Program(spec, Path("."), self.decoder,
                                                            quant_plan=tensor_schemes(spec)), root)
        self.dir = root / self.artifact.path
        self.meta = json.loads((self.dir / "decoder.json").read_text())

    def runner(self):
        return self.target.load(self.artifact, self.root)


@pytest.fixture(scope="session")
def fp32(tmp_path_factory) -> Build:
    spec = make_spec({"sliding_window": {"size": 16, "layers": "even"},
                      "moe": {"experts": 4, "top_k": 2}})
    return Build(spec, tmp_path_factory.mktemp("tvm-fp32"))


@pytest.fixture(scope="session")
def int4(tmp_path_factory) -> Build:
    spec = make_spec({"tie_embeddings": True}, INT4_QUANT,
                     {"target": "llvm", "target_triple": "aarch64-linux-android",
                      "devices": ["opencl", "metal"]})
    return Build(spec, tmp_path_factory.mktemp("tvm-int4"))


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= ATOL + RTOL * float(np.abs(want).max()), f"max |diff| {err}"


def quant_exact_decoder(build: Build):
    dec = copy.deepcopy(build.decoder)
    state = dec.state_dict()
    for name, w in build.artifact.reference_weights.items():
        state[name] = torch.from_numpy(w)
    dec.load_state_dict(state, strict=True)
    return dec


# -- fp32 --------------------------------------------------------------------------------------


def test_fp32_prefill_and_decode_logits_match_torch(fp32: Build) -> None:
    tvm_r, ref = fp32.runner(), TorchRunner(fp32.decoder)
    assert_close(tvm_r.forward(np.array(PROMPT[:12])), ref.forward(np.array(PROMPT[:12])))
    for tok in PROMPT[12:]:  # decode one at a time: T=1 through the same dynamic function
        assert_close(tvm_r.forward(np.array([tok])), ref.forward(np.array([tok])))
    # T=5 later
    assert_close(tvm_r.forward(np.array(PROMPT[:5])), ref.forward(np.array(PROMPT[:5])))


def test_fp32_greedy_matches_torch(fp32: Build) -> None:
    got, got_logits = greedy(fp32.runner(), PROMPT, STEPS)
    want, want_logits = greedy(TorchRunner(fp32.decoder), PROMPT, STEPS)
    assert len(got) == STEPS and got == want
    assert_close(got_logits, want_logits)


def test_reset_zeroes_the_cache(fp32: Build) -> None:
    r = fp32.runner()
    r.forward(np.array(PROMPT))
    r.reset()
    assert_close(r.forward(np.array(PROMPT[3:9])),
                 TorchRunner(fp32.decoder).forward(np.array(PROMPT[3:9])))


def test_runner_rejects_out_of_range_inputs(fp32: Build) -> None:
    r = fp32.runner()
    with pytest.raises(ValueError):
        r.forward(np.array([TINY["vocab_size"]]))  # the graph's gathers are unchecked
    r.forward(np.zeros(TINY["context_length"], dtype=np.int64))
    with pytest.raises(ValueError):
        r.forward(np.array([1]))  # past context_length


def test_fp32_files_weights_and_histogram(fp32: Build) -> None:
    from safetensors.numpy import load_file

    a, d = fp32.artifact, fp32.dir
    assert a.precision == "fp32" and a.reference_weights is None
    assert ({"decoder.so", "decoder.params.safetensors", "decoder.json"}
            <= {p.name for p in d.iterdir()})
    assert a.details["bytes"] == sum(p.stat().st_size for p in d.iterdir())
    assert a.details["target_triple"] is None and a.details["cross"] is None
    # The params file holds exactly the decoder's fp32 weights, in main's argument order.
    stored = load_file(str(d / "decoder.params.safetensors"))
    state = fp32.decoder.state_dict()
    assert [w["name"] for w in fp32.meta["weights"]] and set(stored) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(stored[name], value.numpy())
    # Per layer: q, k, v, o, the router, 3 per expert; one lm_head. Attention's two products
    # and the cache writes are inside one in-place kernel call per layer, not graph ops.
    n, experts = TINY["n_layers"], 4
    assert a.op_histogram["relax.matmul"] == n * (4 + 1 + 3 * experts) + 1
    assert "relax.index_put" not in a.op_histogram
    assert a.details["kernel_calls"] == {"attention": n}
    assert a.op_histogram["relax.topk"] == n  # MoE routing
    sig = a.signature
    assert sig["inputs"]["tokens"]["shape"] == [1, "T"]
    assert list(sig["outputs"]) == ["logits"]  # the caches are written in place, not returned
    assert sig["outputs"]["logits"]["shape"] == [1, "T", TINY["vocab_size"]]
    # layer 0 slides over 16 tokens and keeps a ring of 16 slots
    assert sig["inputs"]["k_cache.0"]["shape"] == sig["inputs"]["v_cache.0"]["shape"] == [
        1, 2, 16, 16]
    assert sig["inputs"]["v_cache.0"]["written_in_place"]
    assert sig["inputs"]["k_cache.1"]["shape"] == [1, 2, 64, 16]
    assert fp32.meta["kv_positions"] == a.details["kv_positions"] == [16, 64]


def test_thread_count_is_settable(fp32: Build) -> None:
    import tvm

    from omnic.targets.tvm.target import set_threads

    assert set_threads(1) == 1 == tvm.get_global_func("runtime.NumThreads")()
    r = fp32.target.load(fp32.artifact, fp32.root, num_threads=1)
    assert tvm.get_global_func("runtime.NumThreads")() == 1
    assert_close(r.forward(np.array(PROMPT[:4])),
                 TorchRunner(fp32.decoder).forward(np.array(PROMPT[:4])))


# -- int4 --------------------------------------------------------------------------------------


def _decode_stored(stored: dict[str, np.ndarray], name: str, q: dict[str, Any],
                   shape: tuple[int, int]) -> np.ndarray:
    """The documented layout, read independently: in each block of B inputs (32, or the
    largest power of two dividing a smaller group), byte i holds input i in its low nibble and
    input i + B/2 in its high nibble."""
    out_f, in_f = shape
    codes = stored[f"{name}.q"]
    g = q["group_size"] or in_f
    if q["scheme"] == "int4":
        block = next(b for b in (32, 16, 8, 4, 2) if g % b == 0)
        nib = np.empty((out_f, in_f), dtype=np.int32)
        for start in range(0, in_f, block):
            byte = codes[:, start // 2: start // 2 + block // 2].astype(np.int32)
            nib[:, start: start + block // 2] = byte & 0x0F
            nib[:, start + block // 2: start + block] = byte >> 4
        codes = nib - (8 if q["symmetric"] else 0)
    codes = codes.astype(np.float64).reshape(out_f, in_f // g, g)
    if not q["symmetric"]:
        zero = stored[f"{name}.zero"]
        if q["scheme"] == "int4":  # nibbles of the flattened [out, G] matrix
            zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(-1)[: out_f * (in_f // g)]
        codes = codes - zero.reshape(out_f, in_f // g).astype(np.float64)[..., None]
    return (codes * stored[f"{name}.scale"].astype(np.float64)[..., None]).reshape(shape)


def test_int4_stored_weights_decode_to_reference_weights(int4: Build) -> None:
    from safetensors.numpy import load_file

    stored = load_file(str(int4.dir / "decoder.params.safetensors"))
    quant = int4.meta["quantization"]
    state = int4.decoder.state_dict()
    ref = int4.artifact.reference_weights
    assert set(quant) == set(ref)
    assert quant["embed.weight"]["scheme"] == "int8" and quant["embed.weight"]["group_size"] is None
    assert quant["layers.1.attn.q.weight"]["symmetric"] is False
    assert quant["layers.0.ffn.down.weight"]["group_size"] == 32
    for name, q in quant.items():
        w = state[name].numpy()
        decoded = _decode_stored(stored, name, q, w.shape)
        np.testing.assert_allclose(ref[name], decoded, rtol=1e-6, atol=1e-9)
        # The codes are omnic's reference quantizer's; only the scales are rounded to fp16.
        np.testing.assert_allclose(decoded, fake_quantize(w, q["scheme"], q["group_size"],
                                                          q["symmetric"]), rtol=2e-3, atol=1e-6)
    assert stored["layers.0.attn.q.weight.q"].dtype == np.uint8
    assert stored["layers.0.attn.q.weight.scale"].dtype == np.float16


def test_int4_params_file_is_packed(int4: Build) -> None:
    from safetensors.numpy import load_file

    from omnic.spec.inventory import decoder_tensors

    quant = int4.meta["quantization"]
    expected = 0
    for t in decoder_tensors(int4.spec.model):
        if t.name not in quant:
            expected += 4 * t.numel
            continue
        q = quant[t.name]
        groups = t.numel // (q["group_size"] or t.shape[-1])
        is_int4 = q["scheme"] == "int4"
        expected += t.numel // (2 if is_int4 else 1) + 2 * groups  # codes + fp16 scales
        if not q["symmetric"]:
            expected += (groups + 1) // 2 if is_int4 else groups  # uint4 / uint8 zero points
    stored = load_file(str(int4.dir / "decoder.params.safetensors"))
    assert sum(a.nbytes for a in stored.values()) == expected
    assert int4.artifact.precision == "int4_g32"


def test_int4_matches_quant_exact_reference(int4: Build) -> None:
    got, got_logits = greedy(int4.runner(), PROMPT, STEPS)
    want, want_logits = greedy(TorchRunner(quant_exact_decoder(int4)), PROMPT, STEPS)
    assert_close(got_logits, want_logits)
    assert got == want
    fp32_logits = TorchRunner(int4.decoder).forward(np.array(PROMPT))
    assert np.abs(fp32_logits - got_logits).max() > 1e-3  # the weights really are quantized


def test_int4_weights_are_decoded_inside_the_matmul_kernels(int4: Build) -> None:
    # No float copy of a packed matrix is made in the graph (the generic graph unpacks nibbles
    # with `& 15` and multiplies by the scales in front of every matmul): each of the 7
    # matrices per layer and the tied head is a packed-matmul kernel call, the embedding a
    # packed-row gather, and attention one in-place kernel per layer.
    n = TINY["n_layers"]
    hist = int4.artifact.op_histogram
    assert "relax.bitwise_and" not in hist and "relax.matmul" not in hist
    assert int4.artifact.details["kernel_calls"] == {"linear": 7 * n + 1, "gather": 1,
                                                     "attention": n}
    assert "relax.topk" not in hist


def test_cross_compiled_archive_is_aarch64(int4: Build) -> None:
    cross = int4.artifact.details["cross"]
    assert cross["triple"] == "aarch64-linux-android"
    path = int4.dir / cross["archive"]
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert {m.name for m in members} == {"lib0.o", "devc.o"}
        for m in members:
            assert m.mtime == 0  # reproducible archive
            data = tar.extractfile(m).read()
            assert data[:4] == b"\x7fELF" and data[4] == 2  # ELF, 64-bit
            assert int.from_bytes(data[16:18], "little") == 1  # ET_REL: relocatable object
            assert int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("quant", [
    {"weights": {"scheme": "fp16"}},  # an fp16 embedding table (its own gather) and head
    {"weights": {"scheme": "int8", "group_size": 32, "symmetric": False}},
])
def test_untied_head_and_qkv_bias_match_the_quant_exact_reference(tmp_path, quant) -> None:
    build = Build(make_spec({"qkv_bias": True}, quant), tmp_path)
    assert build.artifact.details["kernel_calls"]["linear"] == 7 * TINY["n_layers"] + 1
    got, got_logits = greedy(build.runner(), PROMPT[:12], 4)
    want, want_logits = greedy(TorchRunner(quant_exact_decoder(build)), PROMPT[:12], 4)
    assert_close(got_logits, want_logits)
    assert got == want


def test_gpu_device_builds_sit_beside_the_host_library_and_are_never_run(int4: Build) -> None:
    from safetensors.numpy import load_file

    devices = int4.artifact.details["devices"]
    assert set(devices) == {"opencl", "metal"} == set(int4.meta["devices"])
    stored = set(load_file(str(int4.dir / "decoder.params.safetensors")))
    for kind, facts in devices.items():
        library = int4.dir / facts["library"]
        assert library.is_file() and facts["library"] in int4.artifact.details["sha256"]
        assert facts["golden"] == "not_run" and "no " in facts["reason"]
        assert facts["kernels"] > 0
        # the generic graph's weights are the same params file's arrays
        assert set(facts["weights"]) == stored


# -- pre-flight --------------------------------------------------------------------------------


def test_check_accepts_moe_and_sliding_window() -> None:
    tvm_target = get_target("tvm")
    spec = make_spec({"moe": {"experts": 4, "top_k": 2},
                      "sliding_window": {"size": 8, "layers": "all"}}, INT4_QUANT)
    assert tvm_target.check(spec) == []


@pytest.mark.parametrize("spec_kwargs, field", [
    ({"quant": {"weights": {"scheme": "int8"}, "kv_cache": "int8"}}, "quantization.kv_cache"),
    ({"quant": {"weights": {"scheme": "int4", "group_size": 48}}}, "quantization"),
    ({"model": {"ffn": {"kind": "swiglu", "hidden": 127}},
      "quant": {"weights": {"scheme": "int4", "group_size": 1}}}, "quantization"),  # odd group
    ({"tvm": {"target": "cuda"}}, "targets.tvm.target"),
    ({"tvm": {"devices": ["vulkan"]}}, "targets.tvm.devices"),  # no Vulkan codegen in 0.27
    ({"tvm": {"target": "not-a-target"}}, "targets.tvm.target"),
    ({"tvm": {"target_triple": "z80-unknown-none"}}, "targets.tvm.target_triple"),
    # modalities are lowered since issue 8 (tvm_component; tests/targets/test_components.py)
])
def test_check_reports_what_tvm_cannot_take(spec_kwargs: dict[str, Any], field: str) -> None:
    problems = get_target("tvm").check(make_spec(**spec_kwargs))
    assert problems and any(p.field == field for p in problems), problems
    assert all(p.target == "tvm" and p.message for p in problems)
