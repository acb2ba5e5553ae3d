"""ExecuTorch target: tiny decoders lowered to .pte, run on the ExecuTorch runtime, compared.

References: the PyTorch decoder (`TorchRunner`) with the fp32 weights, and the same decoder with
the artifact's `reference_weights` (the weights as stored, dequantized) for the quantized
program; omnic's numpy quantizer for the stored codes; ExecuTorch's own C++ LLM runner
(`TextLLMRunner`) for the program's contract with its ecosystem.
Tolerances: fp32 logits within atol 1e-5 (ExecuTorch's backend Tester compares with atol=rtol=
1e-3, ref: executorch/backends/test/harness/tester.py; XNNPACK's fp32 kernels hold 1e-5 here,
measured 2.4e-7). The 8da4w program quantizes linear inputs to int8 per token at run time, so it
is compared by NMSE 5e-4 (llama.cpp's test-backend-ops bound for matmul-heavy graphs; measured
4e-5) against its quant-exact reference, plus equal greedy tokens.

Lowering is slow on a shared 2-core machine (~40 s idle per program): each program is lowered
once per session (fp32, int4) plus once more for the determinism check.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torchao")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.quant.reference import fake_quantize  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import Artifact, NotRunnable, get_target  # noqa: E402
from omnic.tokenizer import ByteTokenizer  # noqa: E402

pytestmark = pytest.mark.slow  # compiles real .pte files

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": True}
FP32 = {"weights": {"scheme": "fp32"}}
INT4 = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True},
        "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}
PROMPT = [int(t) for t in np.random.default_rng(7).integers(0, 256, 20)]
STEPS = 10


def make_spec(quant: dict[str, Any] = FP32, model: dict[str, Any] | None = None,
              backend: str = "xnnpack", **top: Any) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny", "device": DEVICE, "model": {**TINY, **(model or {})},
        "quantization": quant, "targets": {"executorch": {"backend": backend}}, **top})


class Builds:
    """Each quantization compiled once per session into its own build directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decoder = build_model(make_spec(), Path("."))
        self.built: dict[str, tuple[ResolvedSpec, Artifact, Path]] = {}

    def compile(self, key: str, quant: dict[str, Any]) -> tuple[ResolvedSpec, Artifact, Path]:
        if key not in self.built:
            spec = make_spec(quant)
            build = self.root / key
            before = {k: v.clone() for k, v in self.decoder.state_dict().items()}
            program = Program(spec, Path("."), self.decoder, quant_plan=tensor_schemes(spec))
            (artifact,) = get_target("executorch").lower(program, build / "executorch")
            after = self.decoder.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "lower() mutated it"
            self.built[key] = (spec, artifact, build)
        return self.built[key]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("executorch"))


@pytest.fixture(scope="session")
def fp32(builds):
    spec, artifact, build = builds.compile("fp32", FP32)
    return spec, artifact, build, get_target("executorch").load(artifact, build)


@pytest.fixture(scope="session")
def int4(builds):
    spec, artifact, build = builds.compile("int4", INT4)
    return spec, artifact, build, get_target("executorch").load(artifact, build)


def _reference(decoder, weights: dict[str, np.ndarray] | None):
    model = copy.deepcopy(decoder)
    if weights:
        state = model.state_dict()
        state.update({k: torch.from_numpy(v) for k, v in weights.items()})
        model.load_state_dict(state)
    return TorchRunner(model)


def _nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).mean() / (b**2).mean())


# -- the runtime's own kernels -------------------------------------------------------------------
def test_runtime_fixes_make_the_runtime_agree_with_aten():
    """ExecuTorch 1.5.1 takes int64 remainders with the dividend's sign (a ring layer's slots)
    and runs XNNPACK's erf GELU for a tanh GELU (GeGLU); `runtime_fixes` lowers both as the
    formulas aten defines them by. The stock program differs: when it stops differing, the
    fixes can go. Remainders are exact; XNNPACK's tanh is a few ulp off eager's."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from omnic.targets.executorch.backend import runtime_fixes

    class Ops(torch.nn.Module):
        def forward(self, pos, x):
            return torch.remainder(pos - 5, 4), torch.nn.functional.gelu(x, approximate="tanh")

    args = (torch.arange(8), torch.linspace(-4.0, 4.0, 64))
    rem_want, gelu_want = Ops()(*args)

    def run(fixes: bool):
        ep = torch.export.export(Ops(), args)
        if fixes:
            ep = ep.run_decompositions(runtime_fixes())
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        method = Runtime.get().load_program(program.to_executorch().buffer).load_method("forward")
        return method.execute(list(args))

    rem, gelu = run(fixes=True)
    assert torch.equal(rem, rem_want)
    assert (gelu - gelu_want).abs().max() < 1e-6
    stock_rem, stock_gelu = run(fixes=False)
    assert not torch.equal(stock_rem, rem_want)  # C's %: remainder(-5, 4) is -1, not 3
    assert (stock_gelu - gelu_want).abs().max() > 1e-4  # erf GELU: up to 5e-4 off tanh GELU


# -- pre-flight ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quant, field, words", [
    ({"weights": {"scheme": "int4", "group_size": 32, "symmetric": False}},
     "quantization.weights.symmetric", "symmetric"),
    ({"weights": {"scheme": "int4", "group_size": 16}}, "quantization.weights.group_size",
     "multiple of 32"),
    ({"weights": {"scheme": "int8", "group_size": 32}}, "quantization.weights.group_size",
     "per channel"),
    ({"weights": {"scheme": "int8", "symmetric": False}}, "quantization.weights.symmetric",
     "zero point"),
    ({"weights": {"scheme": "bf16"}}, "quantization.weights.scheme", "fp16"),
    ({"weights": {"scheme": "int4", "group_size": 32},
      "overrides": [{"match": {"name": "layers\\.0\\..*"}, "scheme": "fp16"}]},
     "quantization.overrides[0].scheme", "one float type"),
    ({"weights": {"scheme": "fp32"}, "kv_cache": "int8"}, "quantization.kv_cache", "nearest: none"),
])
def test_check_names_what_xnnpack_cannot_take(quant, field, words):
    problems = get_target("executorch").check(make_spec(quant))
    assert [p.field for p in problems] == [field], problems
    assert words in problems[0].message


def test_check_accepts_supported_schemes():
    target = get_target("executorch")
    assert target.check(make_spec(INT4)) == []
    assert target.check(make_spec({"weights": {"scheme": "int8"}})) == []
    assert target.check(make_spec({"weights": {"scheme": "fp16"}})) == []
    # An untied embedding is only looked up: any int scheme with zero points is fine.
    untied = {"weights": {"scheme": "int4", "group_size": 32},
              "overrides": [{"match": {"role": "embedding"}, "scheme": "int8", "group_size": 16,
                             "symmetric": False}]}
    assert target.check(make_spec(untied, {"tie_embeddings": False})) == []


def test_check_refuses_what_lower_cannot_take():
    """lower() does not repeat the pre-flight (the pipeline runs check first): check refuses."""
    spec = make_spec({"weights": {"scheme": "int8", "group_size": 32}})
    problems = get_target("executorch").check(spec)
    assert [p.field for p in problems] == ["quantization.weights.group_size"], problems


def test_missing_executorch_is_a_problem_and_not_runnable(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` fails
    problems = get_target("executorch").check(make_spec(INT4))
    assert [(p.field, p.message) for p in problems] == [
        ("targets.executorch", "executorch: torchao missing: install omnic[executorch] "
                               "(executorch, torchao)")]
    monkeypatch.setitem(sys.modules, "executorch", None)
    artifact = Artifact("decoder", "executorch", "executorch/x.pte")
    with pytest.raises(NotRunnable, match="executorch missing"):
        get_target("executorch").load(artifact, tmp_path)


def test_coreml_variant_is_not_runnable_here(tmp_path):
    artifact = Artifact("decoder", "executorch", "executorch/x.pte", details={"backend": "coreml"})
    with pytest.raises(NotRunnable, match="CoreMLBackend"):
        get_target("executorch").load(artifact, tmp_path)


# -- fp32 on the runtime ---------------------------------------------------------------------------
def test_fp32_logits_match_torch(fp32, builds):
    spec, artifact, build, runner = fp32
    ref = TorchRunner(builds.decoder)
    runner.reset()
    got, want = runner.forward(np.array(PROMPT)), ref.forward(np.array(PROMPT))
    assert got.shape == (len(PROMPT), TINY["vocab_size"]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for token in [5, 77, 300, 12, 250]:  # decode steps read the cache the prefill wrote
        step = np.array([token])
        np.testing.assert_allclose(runner.forward(step), ref.forward(step), atol=1e-5, rtol=0)
    assert artifact.precision == "fp32" and artifact.reference_weights is None


def test_a_prompt_longer_than_one_call_is_fed_in_chunks(builds, tmp_path, monkeypatch):
    """One call takes max_seq_len tokens (ExecuTorch plans memory for the longest call): here 8
    of the 64 positions, so the 20-token prompt goes in as 8 + 8 + 4, and still matches torch."""
    from omnic.targets.executorch import target as et

    monkeypatch.setattr(et, "MAX_SEQ_LEN", 8)
    spec = make_spec()
    program = Program(spec, Path("."), builds.decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = get_target("executorch").lower(program, tmp_path / "executorch")
    assert artifact.signature["dims"]["seq"] == [1, 8]
    runner = get_target("executorch").load(artifact, tmp_path)
    assert runner.metadata["get_max_seq_len"] == 8
    assert runner.metadata["get_max_context_len"] == TINY["context_length"]
    ref = TorchRunner(builds.decoder)
    np.testing.assert_allclose(runner.forward(np.array(PROMPT)), ref.forward(np.array(PROMPT)),
                               atol=1e-5, rtol=0)
    with pytest.raises(Exception):  # the program itself takes no more than 8 at once
        runner._forward.execute([torch.zeros(1, 9, dtype=torch.int64),
                                 torch.zeros(1, dtype=torch.int64)])


def test_fp32_greedy_matches_torch(fp32, builds):
    runner = fp32[3]
    for prompt in (PROMPT, [256, 72, 105, 33]):
        want, _ = greedy(TorchRunner(builds.decoder), prompt, STEPS)
        got, _ = greedy(runner, prompt, STEPS)
        assert got == want and len(got) == STEPS


def test_kv_cache_lives_in_the_program(fp32):
    runner = fp32[3]
    runner.reset()
    whole = runner.forward(np.array(PROMPT))
    runner.reset()
    pieces = np.concatenate([runner.forward(np.array(part))
                             for part in (PROMPT[:7], PROMPT[7:8], PROMPT[8:])])
    np.testing.assert_allclose(pieces, whole, atol=1e-5, rtol=0)
    runner.reset()  # a fresh program: position 0 and an empty cache again
    np.testing.assert_allclose(runner.forward(np.array(PROMPT)), whole, atol=0, rtol=0)
    # the cache is written in place by export_llm's custom op, and read by its SDPA, not
    # copied back whole
    ops = fp32[1].details["runtime_ops"]
    assert ops.get("llama::update_cache.out") == 2 * TINY["n_layers"]
    assert ops.get("llama::custom_sdpa.out") == TINY["n_layers"]
    assert "aten::copy_" not in ops and "aten::index_put_" not in ops


def test_every_method_loads_and_metadata_is_right(fp32):
    spec, artifact, build, runner = fp32
    tok = ByteTokenizer(TINY["vocab_size"])
    expected = {
        "get_max_seq_len": 64, "get_max_context_len": 64, "get_vocab_size": 320, "get_n_layers": 2,
        "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True,
        "get_bos_id": tok.bos_id, "get_eos_ids": tok.eos_ids,
    }
    assert runner.metadata == expected
    assert runner.method_names == sorted(["forward", *expected])
    assert artifact.details["methods"] == runner.method_names


def test_broken_program_fails_to_load(fp32, tmp_path):
    spec, artifact, build, runner = fp32
    data = (build / artifact.path).read_bytes()
    (tmp_path / "executorch").mkdir()
    (tmp_path / artifact.path).write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        get_target("executorch").load(artifact, tmp_path)


def test_delegation_is_recorded(fp32):
    spec, artifact, build, runner = fp32
    d = artifact.details
    assert d["backend"] == "xnnpack" and d["delegated_ops"] > 0 and d["delegate_partitions"] > 0
    assert "linear" not in d["not_delegated"]  # every matmul of the model runs in XNNPACK
    # q k v o gate up down per layer, RoPE's rotate-half of q and k (llm_graph.py), lm_head
    assert artifact.op_histogram["linear"] == 2 * (7 + 2) + 1
    # export_llm's graph: XNNPACK takes everything between two custom SDPAs, so one partition
    # before the first and one per layer; the lm_head is its own, as its tied weight is also
    # the embedding lookup's (an untied model has n_layers + 1)
    assert d["delegate_partitions"] == TINY["n_layers"] + 2
    assert sum(artifact.op_histogram.values()) == d["delegated_ops"] + d["non_delegated_ops"]
    assert d["runtime_ops"]["<delegate>"] == d["delegate_partitions"]
    assert artifact.signature["inputs"]["tokens"]["shape"] == [1, "seq"]
    # export_llm's cache layout: positions before the KV heads
    assert artifact.signature["state"]["k_cache_1"]["shape"] == [1, 64, 2, 16]


def test_tokenizer_beside_the_pte(fp32):
    from tokenizers import Tokenizer

    spec, artifact, build, runner = fp32
    pte = build / artifact.path
    hf = Tokenizer.from_file(str(pte.parent / "tokenizer.json"))
    assert hf.encode("héllo", add_special_tokens=False).ids == list("héllo".encode())


def test_a_fresh_process_runs_the_program(fp32, tmp_path):
    """The runner registers every kernel the program calls (llama::custom_sdpa, update_cache)
    itself: a process that never lowered anything, as `omnic run`, verify and bench workers."""
    import subprocess
    import sys

    spec, artifact, build, runner = fp32
    code = ("import numpy as np; from omnic.targets.executorch.target import ExecutorchRunner; "
            f"r = ExecutorchRunner({str(build / artifact.path)!r}); "
            f"np.save({str(tmp_path / 'logits.npy')!r}, r.forward(np.array([5, 77, 300])))")
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    runner.reset()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"),
                               runner.forward(np.array([5, 77, 300])), atol=0, rtol=0)


def test_executorch_llm_runner_drives_the_program(fp32, builds):
    """ExecuTorch's own C++ text runner loads the .pte and tokenizer.json and decodes greedily."""
    llm = pytest.importorskip("executorch.extension.llm.runner")
    spec, artifact, build, runner = fp32
    pte = build / artifact.path
    text = "hello"
    want, _ = greedy(TorchRunner(builds.decoder), list(text.encode()), 8)
    pieces: list[str] = []
    et = llm.TextLLMRunner(str(pte), str(pte.parent / "tokenizer.json"))
    config = llm.GenerationConfig(echo=False, max_new_tokens=8, temperature=0.0, num_bos=0)
    et.generate(text, config, token_callback=pieces.append)
    assert "".join(pieces) == ByteTokenizer(TINY["vocab_size"]).decode(want)


def test_lowering_is_deterministic(fp32, builds, tmp_path):
    spec, artifact, build, runner = fp32
    program = Program(spec, Path("."), builds.decoder, quant_plan=tensor_schemes(spec))
    (again,) = get_target("executorch").lower(program, tmp_path / "executorch")
    assert (tmp_path / again.path).read_bytes() == (build / artifact.path).read_bytes()
    assert again.details == artifact.details and again.op_histogram == artifact.op_histogram


# -- int4 (8da4w) ---------------------------------------------------------------------------------
def test_int4_reference_weights_are_the_stored_blocks(int4, builds):
    spec, artifact, build, runner = int4
    ref = artifact.reference_weights
    weights = {k: v.numpy() for k, v in builds.decoder.state_dict().items()}
    assert artifact.precision == "8da4w_g32"
    assert set(ref) == {k for k, v in weights.items() if v.ndim == 2}
    # The embedding lookup is exact: omnic's own int8 codes and scales.
    embed = fake_quantize(weights["embed.weight"], "int8")
    np.testing.assert_array_equal(ref["embed.weight"], embed)
    for name, stored in ref.items():
        if name == "embed.weight":
            continue
        w = weights[name].reshape(weights[name].shape[0], -1, 32).astype(np.float64)
        q = stored.reshape(w.shape).astype(np.float64)
        # Each block of 32 is k * s with integer k in [-8, 7] and one positive scale s; the
        # block's largest-magnitude weight sits on the code -8 (if negative) or +7 (if positive).
        hi, lo = q.max(axis=-1, keepdims=True), -q.min(axis=-1, keepdims=True)
        s = np.where(lo > hi, lo / 8.0, hi / 7.0)
        s = np.where(s == 0, 1.0, s)
        k = q / s
        assert (s > 0).all() and np.abs(k - np.round(k)).max() < 1e-3, name
        assert k.min() > -8.001 and k.max() < 7.001, name
        # ...and every weight is within half a step of what is stored, except weights above
        # +7 steps, clipped to +7 (the Q4_0 level set has no +8): |w| <= 8 s0 for the unrounded
        # scale s0, and bf16 rounding moves s0 by at most 2^-8, so within 8 / (1 - 2^-8) - 7
        # = 1.031 steps.
        bound = np.where(np.round(k) == 7, 1.032, 0.5 * (1 + 1e-3)) * s
        assert (np.abs(q - w) <= bound).all(), name


def test_int4_matches_its_exact_reference(int4, builds):
    spec, artifact, build, runner = int4
    ref = _reference(builds.decoder, artifact.reference_weights)
    got_ids, got = greedy(runner, PROMPT, STEPS)
    want_ids, want = greedy(ref, PROMPT, STEPS)
    assert _nmse(got, want) < 5e-4
    assert got_ids == want_ids
    # and the quantization is real: the fp32 model is further away than the exact reference
    _, fp = greedy(TorchRunner(builds.decoder), PROMPT, 1)
    assert _nmse(got, fp) > 2 * _nmse(got, want)


def test_int4_is_small_and_delegated(int4, fp32):
    spec, artifact, build, runner = int4
    fp32_bytes = (fp32[2] / fp32[1].path).stat().st_size
    assert (build / artifact.path).stat().st_size < 0.35 * fp32_bytes
    assert artifact.quantization["forms"]["layers.0.attn.q.weight"] == "8da4w_g32"
    assert artifact.quantization["forms"]["embed.weight"] == "embedding_8bit+8da8w"
    assert "linear" not in artifact.details["not_delegated"]
    assert artifact.details["runtime_ops"].get("quantized_decomposed::embedding_byte.out") == 1
    assert "int8" in artifact.details["activations"]
