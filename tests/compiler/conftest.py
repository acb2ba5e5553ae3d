"""Builds shared by the pipeline tests, each compiled once per session with the in-test
torch.export target (tests/compiler/export_target.py):

- build_a:  the tiny spec, targets torch_export (fp32) + torch_int8, with --dump-dir
- build_a2: the same spec compiled again (determinism)
- build_b:  the same spec with one field changed (model.rope.theta), for diff
- fault_build: build_a's spec through the CLI with the test::swap_kv_heads pass appended (exit 1)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import export_target  # noqa: F401  (registers torch_export, torch_int8)

TARGETS = ["torch_export", "torch_int8"]
THETA_B = 500000.0


@pytest.fixture(scope="session")
def spec_a(tiny_spec_file):
    return tiny_spec_file("exp")


@pytest.fixture(scope="session")
def spec_b(tiny_spec_file):
    return tiny_spec_file("exp", {"model": {"rope": {"theta": THETA_B}}})


@pytest.fixture(scope="session")
def build_a(spec_a, tmp_path_factory):
    from omnic.compiler.pipeline import compile

    root = tmp_path_factory.mktemp("a")
    result = compile(spec_a, root / "build", targets=TARGETS, dump_dir=root / "dump",
                     progress=False)
    result.dump_dir = root / "dump"
    return result


@pytest.fixture(scope="session")
def build_a2(spec_a, tmp_path_factory):
    from omnic.compiler.pipeline import compile

    return compile(spec_a, tmp_path_factory.mktemp("a2") / "build", targets=TARGETS,
                   progress=False)


@pytest.fixture(scope="session")
def build_b(spec_b, tmp_path_factory):
    from omnic.compiler.pipeline import compile

    return compile(spec_b, tmp_path_factory.mktemp("b") / "build", targets=TARGETS,
                   progress=False)


@pytest.fixture(scope="session")
def fault_build(spec_a, tmp_path_factory):
    """The CLI with a test-only fault pass; returns exit code, requested dir, stderr text."""
    import contextlib
    import io

    from omnic.cli.main import main
    out = tmp_path_factory.mktemp("fault") / "build"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["compile", str(spec_a), "-o", str(out), "--targets", "torch_export",
                     "--quiet", "--append-pass", "test::swap_kv_heads"])
    return SimpleNamespace(code=code, out_dir=out, stderr=err.getvalue())
