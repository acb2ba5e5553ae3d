"""The compile pipeline end to end with a real runtime (torch.export .pt2 files): exit statuses,
atomic output, determinism, dump dir, fault injection, verify, inspect, build runner."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import export_target
from omnic.cli.main import main
from omnic.compiler import manifest as mf
from omnic.compiler.pipeline import CompileError, InputError, compile, failed_dir


def _text(s: str) -> str:
    return re.sub(r"\s+", " ", s)


# -- exit 0, what a good build holds --------------------------------------------------------------


def test_good_build_passes_and_records_everything(build_a):
    assert build_a.exit_code == 0 and build_a.status == "passed"
    out = build_a.out_dir
    m = mf.load(out)
    assert m.status == "passed" and m.targets == ["torch_export", "torch_int8"]
    assert [p.id for p in m.passes] == ["common::verify_inventory", "quant::plan"]
    assert [p.changed for p in m.passes] == [False, True]
    assert m.test_fault is None
    by_target = {a.target: a for a in m.artifacts}
    fp32, int8 = by_target["torch_export"], by_target["torch_int8"]
    for a in (fp32, int8):
        assert a.golden.status == "passed", a.golden.reason
        nbytes, sha = mf.path_digest(out / a.path)
        assert (a.bytes, a.sha256) == (nbytes, sha) and a.bytes > 0
    # The fp32 artifact is compared with the fp32 model, the int8 one with its exact weights.
    assert fp32.golden.reference == "golden/fp32.npz"
    assert re.fullmatch(r"golden/exact-[0-9a-f]{12}\.npz", int8.golden.reference)
    assert fp32.golden.metrics["nmse"] <= 1e-6 and fp32.golden.metrics["kld"] < 1e-6
    # int8 weights cost something against fp32, and the runtime adds nothing to that cost.
    assert int8.golden.metrics["ref_kld"] > 0
    assert int8.golden.metrics["kld"] == pytest.approx(int8.golden.metrics["ref_kld"], rel=1e-3)
    assert set(m.golden.files) == {"golden/inputs.npz", "golden/fp32.npz", int8.golden.reference}
    for rel, sha in m.golden.files.items():
        assert mf.file_sha256(out / rel) == sha
    assert {p.path for p in m.plan_vs_actual} == {fp32.path, int8.path}
    assert all(p.planned_bytes and p.ratio > 0 for p in m.plan_vs_actual)
    assert {s.stage for s in m.timings.stages} >= {"validate", "plan", "check", "build", "passes",
                                                   "reference", "manifest"}


def test_golden_reference_matches_an_independent_rerun(build_a, spec_a):
    """The saved fp32 reference is what a freshly built model computes on the saved inputs."""
    import torch

    from omnic.model import build_model
    from omnic.compiler.validate import load_resolved

    g = np.load(build_a.out_dir / "golden" / "inputs.npz")
    ref = np.load(build_a.out_dir / "golden" / "fp32.npz")
    model = build_model(load_resolved(spec_a), spec_a.parent)
    prompts, tokens = g["prompts"], ref["tokens"]
    assert prompts.shape == (2, 8) and tokens.shape == (2, 4)
    assert not np.isin(prompts, [256, 257, 258]).any()  # bos, eos, pad of the byte tokenizer
    for c in range(2):
        seq = torch.as_tensor(np.concatenate([prompts[c], tokens[c][:-1]]))[None]
        k, v = model.empty_cache(1)
        with torch.no_grad():
            logits = model(seq, torch.arange(seq.shape[1]), k, v)[0][0].numpy()
        np.testing.assert_allclose(ref["logits"][c], logits, atol=1e-5)
        assert list(logits[7:].argmax(-1)) == list(tokens[c])


def test_manifest_validates_against_its_committed_schema(build_a):
    import jsonschema

    schema_path = Path(__file__).resolve().parents[2] / "schemas" / "omnic-manifest.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(json.loads((build_a.out_dir / "manifest.json").read_text()), schema)


def test_dump_dir_has_every_stage(build_a):
    names = sorted(p.name for p in build_a.dump_dir.iterdir())
    assert names == ["01-spec.yaml", "02-resolved.yaml", "03-plan.json", "04-model.txt",
                     "05-passes.json", "05-program-graph.txt", "06-torch_export-artifacts.json",
                     "06-torch_int8-artifacts.json", "07-manifest.json"]
    assert "aten.embedding" in (build_a.dump_dir / "05-program-graph.txt").read_text()
    passes = json.loads((build_a.dump_dir / "05-passes.json").read_text())
    assert passes["quant_plan"]["layers.0.attn.k.weight"]["scheme"] == "fp32"


# -- determinism and diff ---------------------------------------------------------------------


def test_two_compiles_are_identical_apart_from_timings(build_a, build_a2):
    m1, m2 = mf.load(build_a.out_dir), mf.load(build_a2.out_dir)
    assert mf.without_timings(m1) == mf.without_timings(m2)
    assert [a.sha256 for a in m1.artifacts] == [a.sha256 for a in m2.artifacts]
    for rel in m1.golden.files:
        assert (build_a.out_dir / rel).read_bytes() == (build_a2.out_dir / rel).read_bytes()
    assert m1.timings != m2.timings  # wall-clock times do differ; they are the only thing


def test_diff_of_two_specs_differing_in_one_field(build_a, build_b, capsys):
    from omnic.compiler.diff import diff_manifests

    d = diff_manifests(mf.load(build_a.out_dir), mf.load(build_b.out_dir))
    # the input field, and the per-layer table that follows it (every layer alike: one change)
    n = mf.load(build_a.out_dir).spec["model"]["n_layers"]
    assert [(c.path, c.old, c.new) for c in d.spec] == [
        (f"model.layers[0-{n - 1}].rope.theta", 10000.0, 500000.0),
        ("model.rope.theta", 10000.0, 500000.0)]
    assert not d.toolchain and not d.passes
    assert [a.status for a in d.artifacts] == ["changed", "changed"]
    assert all(a.sha256_changed for a in d.artifacts)

    assert main(["diff", str(build_a.out_dir), str(build_b.out_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in out["spec"]][-1] == "model.rope.theta"
    assert out["identical"] is False and out["broken_rules"] == []


def test_fail_on_rules(build_a, build_a2, build_b, capsys):
    a, a2, b = str(build_a.out_dir), str(build_a2.out_dir), str(build_b.out_dir)
    strict = "hash:changed,spec:changed,size:+0%,kld:+0,golden:failed,ops:changed"
    assert main(["diff", a, a2, "--fail-on", strict]) == 0
    assert "identical" in capsys.readouterr().out
    assert main(["diff", a, b, "--fail-on", "spec:changed"]) == 1
    assert "model.rope.theta" in _text(capsys.readouterr().out)
    assert main(["diff", a, b, "--fail-on", "hash:changed"]) == 1
    capsys.readouterr()
    assert main(["diff", a, b, "--fail-on", "size:+50%,golden:failed"]) == 0
    assert main(["diff", a, b, "--fail-on", "sizes:+5%"]) == 2  # unknown rule
    assert main(["diff", a, str(Path(a) / "nope.json")]) == 2


# -- exit 1: a planted fault must fail the golden check -----------------------------------------


def test_fault_injection_fails_the_golden_check_with_a_useful_message(fault_build):
    assert fault_build.code == 1
    assert not fault_build.out_dir.exists()  # the requested OUT_DIR never looks like a build
    kept = failed_dir(fault_build.out_dir)
    m = mf.load(kept)
    assert m.status == "failed" and m.test_fault == "swap_kv_heads"
    (a,) = m.artifacts
    assert a.golden.status == "failed"
    reason = a.golden.reason
    # The message says which metric, where (case and position), the value and the limit.
    assert re.search(r"nmse [0-9.e+-]+ \(at case \d+, vs the reference \(fp32 weights, as "
                     r"stored\)\) breaks <= 1e-06", reason), reason
    assert re.search(r"max_abs [0-9.e+-]+ \(at case \d+ (prompt )?position \d+", reason)
    assert "golden check failed" in _text(fault_build.stderr)


def test_verify_reruns_the_checks_from_the_build_alone(build_a, fault_build, capsys):
    assert main(["verify", str(build_a.out_dir), "--targets", "torch_int8"]) == 0
    out = capsys.readouterr().out
    assert "passed" in out and "torch_export/" not in out
    # The re-run on the faulty artifact fails again, from the saved references only.
    assert main(["verify", str(failed_dir(fault_build.out_dir))]) == 1
    assert main(["verify", str(build_a.out_dir / "missing")]) == 2


def test_verify_reports_not_run(build_a, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")  # rich tables: no folding inside cells
    monkeypatch.setattr(export_target.TorchExportTarget, "not_runnable", True)
    assert main(["verify", str(build_a.out_dir), "--targets", "torch_export"]) == 0
    out = _text(capsys.readouterr().out)
    assert "not_run" in out and "needs a host this test pretends not to be" in out


def test_build_runner_opens_an_artifact_from_the_manifest(build_a):
    from omnic.compiler.artifact_runner import BuildError, open_build_runner

    inputs = np.load(build_a.out_dir / "golden" / "inputs.npz")["prompts"]
    ref = np.load(build_a.out_dir / "golden" / "fp32.npz")["logits"]
    runner = open_build_runner(build_a.out_dir, "torch_export")
    np.testing.assert_allclose(runner.forward(inputs[1]), ref[1][:8], atol=1e-5)
    with pytest.raises(BuildError, match="no onnx/decoder artifact"):
        open_build_runner(build_a.out_dir, "onnx")


def test_inspect(build_a, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["inspect", str(build_a.out_dir)]) == 0
    out = _text(capsys.readouterr().out)
    assert "torch_export/decoder.pt2" in out and "passed" in out
    assert main(["inspect", str(build_a.out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(
        (build_a.out_dir / "manifest.json").read_text())


# -- exit 2 and atomic output -------------------------------------------------------------------


def test_invalid_spec_exits_2_and_writes_nothing(tiny_spec_file, tmp_path, capsys):
    bad = tiny_spec_file("bad", {"model": {"n_kv_heads": 3}})
    assert main(["compile", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "n_kv_heads" in _text(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_existing_out_dir_needs_force(spec_a, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="--force"):
        compile(spec_a, tmp_path / "out", targets=["torch_export"], progress=False)
    with pytest.raises(InputError, match="not enabled in the spec"):
        compile(spec_a, tmp_path / "new", targets=["gguf"], progress=False)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "omnic-" in p.name)


def test_a_crash_in_lowering_leaves_no_build(spec_a, tmp_path, monkeypatch):
    monkeypatch.setattr(export_target.TorchExportTarget, "fail_lower", True)
    with pytest.raises(CompileError, match="torch_export: lowering failed: RuntimeError: "
                                           "simulated crash") as err:
        compile(spec_a, tmp_path / "out", targets=["torch_export"], progress=False)
    assert err.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rebuild_keeps_the_previous_good_build(build_a, spec_a, tmp_path, monkeypatch):
    good = tmp_path / "out"
    shutil.copytree(build_a.out_dir, good)
    before = (good / "manifest.json").read_bytes()

    def interrupted(self, program, out_dir):
        (out_dir / "partial.bin").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_target.TorchExportTarget, "lower", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compile(spec_a, good, targets=["torch_export"], force=True, progress=False)
    assert (good / "manifest.json").read_bytes() == before
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
