"""A tiny build (the suite's tiny spec, target gguf) benchmarked once per session through the
CLI, with a Core ML entry added to its manifest.

gguf rather than onnx: the tiny spec compiles to GGUF in ~12 s here against ~60 s for ONNX
(torch.export + the ONNX exporter dominate), and the bench code does not depend on the target.

The Core ML entry is written by hand (a manifest row pointing at an empty .mlpackage folder)
rather than compiled: what is under test is that `omnic bench` reports an artifact its runtime
refuses on this host (`NotRunnable("needs macOS")`, raised by the real Core ML target before it
reads any file), and compiling Core ML here would add half a minute for no further coverage.
"""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from bench_params import BANDWIDTH_MB, DECODE, PROMPT, REPEAT, THREADS  # noqa: F401


@pytest.fixture(scope="session")
def tiny_build(tiny_spec_file, tmp_path_factory):
    """The tiny spec compiled to gguf, plus a hand-written coreml manifest entry."""
    from omnic.compiler import manifest as mf
    from omnic.compiler.pipeline import compile

    spec = tiny_spec_file("benchtiny", {"targets": {"onnx": None, "gguf": {}}})
    result = compile(spec, tmp_path_factory.mktemp("bench") / "build", targets=["gguf"],
                     progress=False)
    assert result.exit_code == 0, result.manifest.artifacts
    out = result.out_dir
    manifest = mf.load(out)
    (out / "coreml" / "benchtiny.mlpackage").mkdir(parents=True)
    gguf_entry = manifest.artifacts[0]
    _, empty_sha = mf.path_digest(out / "coreml" / "benchtiny.mlpackage")  # bench verifies it
    coreml = gguf_entry.model_copy(update={
        "target": "coreml", "path": "coreml/benchtiny.mlpackage", "bytes": 0, "sha256": empty_sha,
        "precision": "fp16",
        "details": {"context_length": 64, "compute_units": "cpu_only"},
        "golden": mf.GoldenEntry(status="not_run", reason="needs macOS")})
    manifest = manifest.model_copy(update={"artifacts": [*manifest.artifacts, coreml],
                                           "targets": [*manifest.targets, "coreml"]})
    mf.write(manifest, out)
    return SimpleNamespace(dir=out, manifest=manifest)


@pytest.fixture(scope="session")
def bench_run(tiny_build, tmp_path_factory):
    """`omnic bench` on the tiny build: exit code, JSON report, stdout table."""
    from omnic.cli.main import main

    path = tmp_path_factory.mktemp("bench-json") / "bench.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench", str(tiny_build.dir), "--threads", str(THREADS),
                     "--prompt-tokens", str(PROMPT), "--decode-tokens", str(DECODE),
                     "--repeat", str(REPEAT), "--bandwidth-mb", str(BANDWIDTH_MB),
                     "--json", str(path)])
    return SimpleNamespace(code=code, report=json.loads(path.read_text()),
                           stdout=stdout.getvalue(), stderr=stderr.getvalue())
