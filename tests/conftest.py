"""Session-scoped fixtures shared by the whole suite.

- `tiny_spec_file`: a factory writing a tiny spec YAML (2 layers, d_model 64, vocab 320) with
  deep-merged overrides, for tests that go through files (compile, validate, golden).
- `mobile_2gb_build`: specs/mobile_2gb.yaml compiled ONCE per session with all five targets,
  shared by every target's tests and by the golden conformance tests. Its CompileResult has
  `.out_dir` (the build, or OUT_DIR.failed when a golden check failed) and `.manifest`.

Nothing here imports torch at import time: torch-free test modules stay fast.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

from tiny_specs import TINY_SPEC  # noqa: E402 - one definition, importable by tests


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in `top` replaces; a None value deletes."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture(scope="session")
def tiny_spec_file(tmp_path_factory) -> Callable[..., Path]:
    """`tiny_spec_file(name="x", overrides={...})` -> path of a spec YAML (a fresh directory)."""

    def make(name: str = "tiny", overrides: dict[str, Any] | None = None) -> Path:
        data = deep_merge(TINY_SPEC, {"name": name, **(overrides or {})})
        path = tmp_path_factory.mktemp(f"spec-{name}") / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def mobile_2gb_build(tmp_path_factory):
    """specs/mobile_2gb.yaml compiled once with all of its targets (a CompileResult).

    Every target the spec names must be installed and accept the spec: `make test` installs
    every backend, so a missing one is a failure here, never a silently smaller build.
    """
    from omnic.compiler.pipeline import compile

    spec = REPO / "specs" / "mobile_2gb.yaml"
    out = tmp_path_factory.mktemp("mobile_2gb") / "build"
    return compile(spec, out, progress=False)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run ~50x slower when torch's
    worker threads spin. Test folders of tiny models make it autouse in their conftest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
