"""`omnic compile --jobs N` (omnic.compiler.parallel_targets): targets in worker processes,
bounded by memory, with the manifest a one-at-a-time compile writes.

The CLI runs in a fresh process (tests/compiler/jobs_spy.py) whose targets' lowering records, in
a file, the process it ran in and when; the tests read those files, not anything the compile
reports about itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
TARGETS = {"onnx": {}, "gguf": {}}


@pytest.fixture(scope="module")
def spec(tiny_spec_file):
    return tiny_spec_file("jobs", {"targets": TARGETS})


def _cli(tmp: Path, spec: Path, *args: str, fail: str | None = None, **env: str
         ) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    log = tmp / "runs.jsonl"
    environ = {**os.environ, "JOBS_SPY_LOG": str(log), "JOBS_SPY_FAIL": fail or "",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               **env}
    proc = subprocess.run([sys.executable, "-c", "import jobs_spy; jobs_spy.main()", "compile",
                           str(spec), "-o", str(tmp / "b"), "--no-cache", "-q", *args],
                          capture_output=True, text=True, env=environ, timeout=900)
    runs = {r["target"]: r for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else {}
    return proc, runs


def _manifest(out: Path) -> dict:
    data = json.loads((out / "manifest.json").read_text())
    data.pop("timings")
    return data


@pytest.fixture(scope="module")
def one_at_a_time(spec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs1")
    proc, runs = _cli(tmp, spec)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len({r["pid"] for r in runs.values()}) == 1  # one process did both
    return tmp / "b"


def test_targets_run_at_once_in_their_own_processes(spec, one_at_a_time, tmp_path):
    proc, runs = _cli(tmp_path, spec, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(runs) == {"onnx", "gguf"}
    assert len({r["pid"] for r in runs.values()}) == 2
    a, b = runs["onnx"], runs["gguf"]
    assert a["start"] < b["end"] and b["start"] < a["end"]  # they overlapped
    assert _manifest(tmp_path / "b") == _manifest(one_at_a_time)
    timings = json.loads((tmp_path / "b" / "manifest.json").read_text())["timings"]
    stages = {s["stage"] for s in timings["targets"]}
    assert {"onnx: lower", "onnx: golden", "gguf: lower", "gguf: golden"} <= stages


def test_memory_bounds_what_runs_at_once(spec, one_at_a_time, tmp_path):
    # 1 byte to plan with: the estimates of two targets never fit together
    proc, runs = _cli(tmp_path, spec, "--jobs", "2", OMNIC_JOBS_MEMORY="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = sorted(runs.values(), key=lambda r: r["start"])
    assert a["end"] <= b["start"]  # one after the other
    assert a["pid"] != b["pid"]  # still each in a worker
    assert _manifest(tmp_path / "b") == _manifest(one_at_a_time)


def test_a_failing_worker_fails_the_compile_and_leaves_no_build(spec, tmp_path):
    proc, _ = _cli(tmp_path, spec, "--jobs", "2", fail="gguf")
    assert proc.returncode == 1
    assert "planted failure in gguf" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]  # no staging left


def test_jobs_below_one_is_bad_input(spec, tmp_path):
    proc, runs = _cli(tmp_path, spec, "--jobs", "0")
    assert proc.returncode == 2 and "--jobs 0" in proc.stderr and not runs
