"""Hardening of builds (issue 22, items 3 and 4): interrupted and failed compiles leave nothing
behind, and a build's artifacts are used only while their sha256 is the manifest's.

- SIGTERM during a compile: exit 143, one line, no traceback, no staging directory;
- the staging directory of a killed compile (dead pid) is removed by the next compile into the
  same place, a live one never;
- a full disk (ENOSPC / EDQUOT): exit 1 naming the path and the bytes, nothing on disk;
- `omnic verify` reports each modified file with both digests (exit 1) before any re-check;
- `omnic run` / `omnic bench` refuse a modified artifact (exit 2) unless --no-verify;
- `omnic run` fails (exit 1) on empty, misshapen or non-finite logits instead of printing text.

One tiny gguf build per module (gguf compiles in a few seconds, ONNX in a minute); each test that
damages a build works on its own copy.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from omnic.cli.main import main as omnic_main

REPO = Path(__file__).resolve().parents[2]
GGUF_ONLY = {"targets": {"onnx": None, "gguf": {}}}
STAGING = ".omnic-staging-"


@pytest.fixture(scope="module")
def spec(tiny_spec_file) -> Path:
    return tiny_spec_file("hardening", GGUF_ONLY)


@pytest.fixture(scope="module")
def build(spec, tmp_path_factory):
    """The tiny spec compiled to gguf once: its directory, manifest and gguf entry."""
    import torch

    from omnic.compiler import manifest as mf
    from omnic.compiler.pipeline import compile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model, busy 2-core machine
    try:
        result = compile(spec, tmp_path_factory.mktemp("hardening") / "build", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.manifest.artifacts
    manifest = mf.load(result.out_dir)
    (entry,) = manifest.artifacts
    return SimpleNamespace(dir=result.out_dir, manifest=manifest, gguf=entry)


def _copy(build, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(build.dir, copy)
    return copy


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = omnic_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# -- 3. interrupted compiles -----------------------------------------------------------------

# The CLI in a fresh process whose lowering sleeps first: the staging directory then exists for a
# minute, so the signal lands while the compile is writing, without a race.
SLOW_COMPILE = """
import sys, time
import omnic.compiler.pipeline as pipeline
lower = pipeline.lower_target
def slow_lower(*args):
    time.sleep(60)
    return lower(*args)
pipeline.lower_target = slow_lower
from omnic.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_removes_staging_and_exits_143(spec, tmp_path):
    out = tmp_path / "build"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMPILE, "compile", str(spec), "-o",
                             str(out), "-q"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(STAGING in n for n in _leftovers(tmp_path)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the compile never created its staging dir"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    assert _leftovers(tmp_path) == []  # no staging dir, no build


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_a_killed_compile_is_removed(spec, tmp_path, one_torch_thread):
    from omnic.compiler.pipeline import compile

    out = tmp_path / "build"
    dead = tmp_path / f".build{STAGING}{_dead_pid()}"
    (dead / "gguf").mkdir(parents=True)
    (dead / "gguf" / "half.gguf").write_bytes(b"half")
    alive_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    alive = tmp_path / f".build{STAGING}{alive_proc.pid}"
    alive.mkdir()
    other = tmp_path / f".other{STAGING}{_dead_pid()}"  # another OUT_DIR's: not ours to judge
    other.mkdir()
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("omnic")
    logger.addHandler(handler)
    try:
        result = compile(spec, out, progress=False)
    finally:
        logger.removeHandler(handler)
        alive_proc.kill()
        alive_proc.wait()
    assert result.exit_code == 0
    assert not dead.exists()
    assert alive.is_dir() and other.is_dir()
    assert _leftovers(tmp_path) == sorted(["build", alive.name, other.name])
    removed = [line for line in lines if "stale staging" in line]
    assert len(removed) == 1 and str(dead) in removed[0], lines


def test_a_build_a_killed_publish_moved_aside_comes_back(tmp_path):
    """A compile killed between publish's two renames left the previous build at
    .NAME.omnic-old-PID: the next compile into the same place puts it back when nothing replaced
    it, and removes it when something did."""
    from omnic.compiler.staging import OLD_MARK, remove_stale

    out = tmp_path / "build"
    moved = tmp_path / f".build{OLD_MARK}{_dead_pid()}"
    moved.mkdir()
    (moved / "manifest.json").write_text("{}")
    failed_moved = tmp_path / f".build.failed{OLD_MARK}{_dead_pid()}"
    failed_moved.mkdir()
    (tmp_path / "build.failed").mkdir()  # replaced since: the moved copy is only a leftover
    remove_stale(out)
    assert (out / "manifest.json").read_text() == "{}"
    assert _leftovers(tmp_path) == ["build", "build.failed"]


def test_publish_cannot_stop_between_its_renames(tmp_path, monkeypatch):
    """A failing second rename puts the previous build back, and SIGINT / SIGTERM are held
    while publish renames."""
    import signal

    from omnic.compiler import staging as st

    final, new = tmp_path / "build", tmp_path / ".build.omnic-staging-1"
    final.mkdir()
    (final / "old").write_text("old")
    new.mkdir()
    seen = []
    real_rename = Path.rename

    def rename(self, target):
        seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))
        if self == new:
            raise OSError(errno.EXDEV, "cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        st.publish(new, final)
    assert (final / "old").read_text() == "old" and new.is_dir()
    assert all({signal.SIGINT, signal.SIGTERM} <= mask for mask in seen), seen


def _enospc_in_golden(monkeypatch, out: Path) -> None:
    """The golden reference's .npz write finds the disk full (a plain OSError)."""
    import omnic.golden.check as golden_check

    def full(path, arrays):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(golden_check, "save_npz", full)


def _edquot_in_lowering(monkeypatch, out: Path) -> None:
    """The gguf writer exceeds the quota (the lower stage wraps it in a CompileError)."""
    from omnic.targets.gguf.target import GgufTarget

    def over_quota(self, program, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "x.gguf").write_bytes(b"partial")
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(Path(out_dir) / "x.gguf"))

    monkeypatch.setattr(GgufTarget, "lower", over_quota)


@pytest.mark.parametrize("fault, errno_, written", [
    (_enospc_in_golden, errno.ENOSPC, "build/golden/"),
    (_edquot_in_lowering, errno.EDQUOT, "build/gguf/x.gguf"),
], ids=["enospc-golden", "edquot-lowering"])
def test_full_disk_is_a_clean_error(spec, tmp_path, monkeypatch, capsys, one_torch_thread,
                                    fault, errno_, written):
    out = tmp_path / "build"
    fault(monkeypatch, out)
    code, stdout, err = _cli(capsys, "compile", spec, "-o", out, "-q")
    assert code == 1, err
    assert "Traceback" not in err and stdout == ""
    message = " ".join(err.split())  # rich wraps long lines
    assert f"{os.strerror(errno_)} while writing {tmp_path / written}" in message
    assert "the artifacts need about" in message and "bytes are free there" in message
    assert _leftovers(tmp_path) == []  # no staging dir, no build


# -- 4. artifacts checked by their digests -----------------------------------------------------


def _append(path: Path) -> None:
    with open(path, "ab") as f:  # llama.cpp still loads the file: only the digest tells
        f.write(b"\0" * 32)


def test_verify_an_intact_build_passes(build, capsys):
    """The control for the next test: the digest check does not flag an untouched build."""
    code, out, err = _cli(capsys, "verify", build.dir)
    assert code == 0, out + err
    assert "modified" not in out + err


@pytest.mark.parametrize("which", ["artifact", "golden"])
def test_verify_reports_modified_files_first(build, tmp_path, capsys, which):
    copy = _copy(build, tmp_path)
    rel = build.gguf.path if which == "artifact" else sorted(build.manifest.golden.files)[0]
    expected = build.gguf.sha256 if which == "artifact" else build.manifest.golden.files[rel]
    _append(copy / rel)
    actual = _sha256(copy / rel)
    code, out, err = _cli(capsys, "verify", copy)
    assert code == 1
    assert "Traceback" not in out + err
    assert f"modified {rel}: expected sha256 {expected}, actual {actual}" in out.splitlines()
    assert "golden checks were not re-run" in err
    assert "passed" not in out  # no re-check table
    assert _sha256(copy / rel) == actual  # verify reads, never repairs or deletes


def test_run_refuses_a_modified_artifact(build, tmp_path, capsys):
    copy = _copy(build, tmp_path)
    _append(copy / build.gguf.path)
    argv = ["run", copy, "--target", "gguf", "--tokens", "1,2,3", "--max-new-tokens", "2",
            "--json"]
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and out == ""
    message = " ".join(err.split())
    assert "refusing an artifact modified since the compile" in message
    assert (f"modified {build.gguf.path}: expected sha256 {build.gguf.sha256}, actual "
            f"{_sha256(copy / build.gguf.path)}") in message
    code, out, err = _cli(capsys, *argv, "--no-verify")
    assert code == 0, err
    assert len(json.loads(out)["tokens"]) == 2


def test_bench_refuses_a_modified_artifact(build, tmp_path, capsys):
    copy = _copy(build, tmp_path)
    _append(copy / build.gguf.path)
    argv = ["bench", copy, "--threads", "1", "--prompt-tokens", "4", "--decode-tokens", "2",
            "--repeat", "1", "--warmup", "0", "--bandwidth-mb", "8", "--json", "-"]
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and out == ""
    message = " ".join(err.split())
    assert "refusing an artifact modified since the compile" in message
    assert f"modified {build.gguf.path}: expected sha256 {build.gguf.sha256}" in message
    assert "bandwidth" not in err  # refused before measuring anything
    code, out, err = _cli(capsys, *argv, "--no-verify")
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["status"] == "ok", row


class _Garbage:
    """A real runner whose logits `spoil` damages."""

    def __init__(self, runner, spoil):
        self.runner, self.spoil = runner, spoil

    def reset(self):
        self.runner.reset()

    def forward(self, tokens):
        return self.spoil(np.array(self.runner.forward(tokens), dtype=np.float32))


def _nan(x):
    x[-1, 0] = np.nan
    return x


@pytest.mark.parametrize("spoil, what", [
    (lambda x: x[:0], "the runtime returned empty logits (shape [0, 320], expected [3, 320])"),
    (lambda x: x[:, :7], "the runtime returned logits of shape [3, 7], expected [3, 320]"),
    (_nan, "the runtime returned 1 non-finite logit(s) (NaN or inf) of 960 ([3, 320])"),
], ids=["empty", "shape", "nan"])
def test_run_fails_on_garbage_logits(build, monkeypatch, capsys, spoil, what):
    import omnic.compiler.artifact_runner as ar

    real = ar.open_build_runner
    monkeypatch.setattr(ar, "open_build_runner",
                        lambda *a, **k: _Garbage(real(*a, **k), spoil))
    code, out, err = _cli(capsys, "run", build.dir, "--target", "gguf", "--tokens", "1,2,3",
                          "--max-new-tokens", "2")
    assert code == 1
    assert "Traceback" not in err and out == ""
    assert f"error: {build.dir / build.gguf.path} (gguf): {what}" in " ".join(err.split())
