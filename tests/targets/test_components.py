"""Components (vision / audio encoders, sensor projector, action head) as their own artifacts on
ONNX, ExecuTorch, Core ML and TVM, each golden-checked on its runtime (issue 8, deliverable 4).

One tiny multimodal spec (decoder 2 layers d 64 fp32; vision 32 px patch 8, 2 layers d 32; audio
16 mels x 64 frames, 2 layers d 32; a 6-d sensor into 2 tokens; a 4 x 7 action head) is compiled
once per session to the four targets (`mm_build`), and once more with the test-only fault
`permute_component_weights` to TVM only (`mm_fault_build`): the cheapest runnable target for
this spec (ONNX exports the decoder three times for a multimodal spec).

The numeric tests do not trust the build's numbers: they rebuild each torch module from the
manifest's resolved spec, run every artifact on its runtime through the backend library directly
(onnxruntime, the ExecuTorch bindings, the TVM Relax VM), and recompute the errors.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

TARGETS = ["onnx", "executorch", "coreml", "tvm"]
COMPONENTS = ["vision_encoder", "audio_encoder", "sensor_projector", "action_head"]
RUNNABLE = ["onnx", "executorch", "tvm"]  # Core ML: macOS only
MODALITIES = {
    "vision": {"image_size": 32, "patch_size": 8, "d_model": 32, "n_layers": 2, "n_heads": 2},
    "audio": {"n_mels": 16, "n_frames": 64, "d_model": 32, "n_layers": 2, "n_heads": 2},
    "sensors": {"dim": 6, "n_tokens": 2},
    "action_head": {"dim": 7, "horizon": 4, "hidden": 32},
}
# What an fp32 runtime may differ from PyTorch on these tiny components, set by this test file
# (not read from omnic's table): outputs are ~0.05 in magnitude, fp32 reassociation noise is
# ~1e-8 absolute; a permuted weight gives errors ~1e-2 and NMSE ~1.
FP32_MAX_ABS = 1e-5
FP32_NMSE = 1e-8


@pytest.fixture(scope="session")
def mm_spec(tiny_spec_file):
    return tiny_spec_file("mm", {"modalities": MODALITIES, "targets": {t: {} for t in TARGETS}})


@pytest.fixture(scope="session")
def mm_build(mm_spec, tmp_path_factory):
    import torch

    from omnic.compiler.pipeline import compile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is fastest
    try:
        return compile(mm_spec, tmp_path_factory.mktemp("mm") / "build", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mm_fault_build(mm_spec, tmp_path_factory):
    import torch

    from omnic.compiler.pipeline import compile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compile(mm_spec, tmp_path_factory.mktemp("mm-fault") / "build", targets=["tvm"],
                       progress=False, extra_passes=["test::permute_component_weights"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def torch_components(mm_build):
    """The components rebuilt from the manifest's resolved spec (independent of the build)."""
    from omnic.model.components import build_components
    from omnic.spec import ResolvedSpec

    spec = ResolvedSpec.model_validate(mm_build.manifest.spec)
    return build_components(spec, Path("."))


def _entry(manifest, target, component):
    (e,) = [a for a in manifest.artifacts if a.target == target and a.component == component]
    return e


def _run_directly(build_dir: Path, entry, x: np.ndarray, module) -> np.ndarray:
    """Run one component artifact with the backend library itself (not omnic's runners)."""
    path = build_dir / entry.path
    (in_name,) = entry.signature["inputs"]
    if entry.target == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [in_name]
        return sess.run(None, {in_name: x})[0]
    if entry.target == "executorch":
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(path.read_bytes()).load_method("forward")
        return method.execute([torch.from_numpy(x)])[0].numpy()
    if entry.target == "tvm":
        import tvm
        from safetensors.numpy import load_file
        from tvm import relax

        (lib,) = path.glob("*.so")
        (params,) = path.glob("*.params.safetensors")
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        weights = load_file(str(params))
        # main's weight arguments follow the module's parameter order (torch.export lifts them
        # in named_parameters() order)
        names = [n for n, _ in module.named_parameters()]
        assert sorted(weights) == sorted(names)
        out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(weights[n]) for n in names])
        return (out if hasattr(out, "numpy") else out[0]).numpy()
    raise AssertionError(entry.target)


def _inputs(component, build_dir: Path) -> np.ndarray:
    """The two golden inputs: the first must be the builder's example input itself."""
    from omnic.golden.store import load_npz

    saved = load_npz(build_dir / "golden" / "components" / f"{component.name}.npz")["inputs"]
    assert saved.shape[0] == 2
    np.testing.assert_array_equal(saved[0], component.example_input.numpy())
    assert not np.array_equal(saved[0], saved[1])
    return saved


def test_compile_passes_and_lists_every_component(mm_build) -> None:
    m = mm_build.manifest
    assert mm_build.status == "passed" and mm_build.exit_code == 0, [
        (a.target, a.component, a.golden.reason) for a in m.artifacts if a.golden.reason]
    got = {(a.target, a.component) for a in m.artifacts}
    assert got == {(t, c) for t in TARGETS for c in ["decoder", *COMPONENTS]}
    for a in m.artifacts:
        assert (mm_build.out_dir / a.path).exists(), a.path
        if a.component != "decoder":
            assert a.component in Path(a.path).name and a.path.startswith(a.target + "/")
            assert a.quantization["weights"] == a.precision
    planned = {(p.target, p.component) for p in m.plan_vs_actual}
    assert planned == got
    golden_files = set(m.golden.files)
    assert {f"golden/components/{c}.npz" for c in COMPONENTS} <= golden_files


@pytest.mark.parametrize("target", RUNNABLE)
@pytest.mark.parametrize("component", COMPONENTS)
def test_component_golden_confirmed_independently(mm_build, torch_components, target,
                                                  component) -> None:
    import torch

    comp = torch_components[component]
    build_dir = mm_build.out_dir
    entry = _entry(mm_build.manifest, target, component)
    assert entry.golden.status == "passed", entry.golden.reason
    assert entry.precision == "fp32"
    (in_name, in_sig), = entry.signature["inputs"].items()
    assert in_name == comp.input_name and in_sig["shape"] == list(comp.example_input.shape)

    max_abs, nmse = 0.0, 0.0
    for x in _inputs(comp, build_dir):
        with torch.no_grad():
            want = comp.module(torch.from_numpy(x)).numpy().astype(np.float64)
        got = np.asarray(_run_directly(build_dir, entry, np.ascontiguousarray(x), comp.module),
                         np.float64)
        assert got.shape == want.shape
        assert np.abs(want).max() > 1e-3  # a non-trivial output
        max_abs = max(max_abs, float(np.abs(got - want).max()))
        nmse = max(nmse, float(((got - want) ** 2).sum() / (want**2).sum()))
    assert max_abs <= FP32_MAX_ABS and nmse <= FP32_NMSE, (max_abs, nmse)
    # the build's reported metrics are what an independent run measures (same inputs, same
    # runtime: equal up to run-to-run reassociation noise)
    reported = entry.golden.metrics
    assert reported["max_abs"] == pytest.approx(max_abs, rel=0.5, abs=1e-7)
    assert reported["nmse"] == pytest.approx(nmse, rel=0.5, abs=1e-13)


@pytest.mark.parametrize("component", COMPONENTS)
def test_coreml_component_structure_checked_not_run(mm_build, component) -> None:
    from omnic.compiler.artifact_runner import artifact_from_entry
    from omnic.targets.coreml.components import structural_check

    entry = _entry(mm_build.manifest, "coreml", component)
    assert entry.golden.status == "not_run" and "needs macOS" in entry.golden.reason
    assert entry.precision == "fp16"  # targets.coreml compute_precision defaults to fp16
    assert entry.details["compute_precision"] == "fp16"
    artifact = artifact_from_entry(entry)
    assert structural_check(artifact, mm_build.out_dir) == []
    # the check is not vacuous: a recorded signature or op count the package does not have
    wrong = artifact_from_entry(entry)
    (out_name,) = wrong.signature["outputs"]
    wrong.signature["outputs"][out_name] = {"dtype": "float32", "shape": [1, 1, 1]}
    wrong.op_histogram["linear"] = wrong.op_histogram.get("linear", 0) + 1
    failures = structural_check(wrong, mm_build.out_dir)
    assert any("outputs" in f for f in failures) and any("op histogram" in f for f in failures)


def test_fault_in_components_fails_the_compile(mm_fault_build) -> None:
    r = mm_fault_build
    assert r.status == "failed" and r.exit_code == 1
    assert (r.out_dir.name.endswith(".failed")
            and r.manifest.test_fault == "permute_component_weights")
    by = {a.component: a for a in r.manifest.artifacts}
    assert by["decoder"].golden.status == "passed"  # the fault touches components only
    for c in COMPONENTS:
        g = by[c].golden
        assert g.status == "failed" and "nmse" in g.reason, (c, g)
        assert g.metrics["nmse"] > 1e-4, (c, g.metrics)  # measured 6e-3 .. 0.18


def test_diff_shows_component_changes(mm_build, mm_fault_build) -> None:
    from omnic.compiler.diff import broken_rules, diff_manifests, parse_rules

    d = diff_manifests(mm_build.manifest, mm_fault_build.manifest)
    changed = {(a.target, a.component): a for a in d.artifacts}
    for c in COMPONENTS:
        a = changed[("tvm", c)]
        assert a.status == "changed" and a.sha256_changed  # the params file holds the fault
        assert a.golden_status == ("passed", "failed") and "nmse" in a.metrics
        assert changed[("onnx", c)].status == "removed"
    decoder = changed[("tvm", "decoder")]  # untouched by the fault
    assert not decoder.sha256_changed and decoder.golden_status is None
    broken = broken_rules(d, mm_fault_build.manifest, parse_rules("golden:regressed"))
    assert {c for c in COMPONENTS if any(f"tvm/{c} " in b for b in broken)} == set(COMPONENTS)


def test_verify_reruns_component_checks(mm_build) -> None:
    from omnic.cli.verify import verify_build

    _, results = verify_build(mm_build.out_dir, ["onnx", "coreml"])
    status = {(e.target, e.component): g.status for e, g in results}
    for c in COMPONENTS:
        assert status[("onnx", c)] == "passed"
        assert status[("coreml", c)] == "not_run"


def test_preflight_accepts_modalities() -> None:
    from tiny_specs import TINY_SPEC, make_resolved_spec

    from omnic.targets.base import get_target

    spec = make_resolved_spec(TINY_SPEC["model"], modalities=MODALITIES,
                              targets={t: {} for t in TARGETS})
    for t in TARGETS:
        problems = [p for p in get_target(t).check(spec) if "modalities" in p.field]
        assert problems == [], (t, problems)


class _Recording:
    """A target that writes one file per call and records the calls (for `lower_target`)."""

    id = "recording"

    def __init__(self, mutate: str | None = None) -> None:
        self.calls: list[str] = []
        self.mutate = mutate

    def _write(self, out_dir: Path, name: str, precision: str = "fp32"):
        from omnic.targets.base import Artifact

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.bin").write_bytes(b"x")
        self.calls.append(name)
        return Artifact(name, self.id, f"{out_dir.name}/{name}.bin", precision=precision)

    def lower(self, program, out_dir: Path):
        return [self._write(out_dir, "decoder")]

    def lower_component(self, program, name: str, out_dir: Path):
        if name == self.mutate:
            import torch

            with torch.no_grad():
                next(program.components[name].module.parameters()).add_(1.0)
        return self._write(out_dir, name)


def _toy_program():
    import torch

    from omnic.passes.program import Program

    comps = {name: SimpleNamespace(name=name, module=torch.nn.Linear(2, 2))
             for name in ["action_head", "audio_encoder", "vision_encoder"]}  # not in order
    return Program(spec=None, spec_dir=Path("."), decoder=torch.nn.Linear(2, 2), components=comps)


def test_pipeline_lowers_decoder_then_each_component_in_order(tmp_path) -> None:
    from omnic.compiler.lowering import lower_target

    target = _Recording()
    artifacts = lower_target("recording", target, _toy_program(), tmp_path)
    order = ["decoder", "vision_encoder", "audio_encoder", "action_head"]
    assert target.calls == order
    assert [a.component for a in artifacts] == order
    assert [a.path for a in artifacts] == [f"recording/{c}.bin" for c in order]


def test_pipeline_refuses_a_component_lowering_that_mutates_or_is_missing(tmp_path) -> None:
    from omnic.compiler.errors import CompileError
    from omnic.compiler.lowering import lower_target

    with pytest.raises(CompileError, match="lower_component\\('audio_encoder'\\) modified"):
        lower_target("recording", _Recording(mutate="audio_encoder"), _toy_program(), tmp_path)

    class DecoderOnly(_Recording):
        lower_component = None

    with pytest.raises(CompileError, match="cannot lower the vision_encoder"):
        lower_target("recording", DecoderOnly(), _toy_program(), tmp_path / "b")
