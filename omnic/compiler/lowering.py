"""The lower stage for one target: its artifacts, and the checks every target is held to.

A target must not mutate the program it lowers (its weights' version counters are compared
before and after), and every artifact path it returns must exist under the build directory.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.compiler.errors import CompileError

if TYPE_CHECKING:
    from omnic.targets.base import Artifact


def lower_target(target_id: str, target: Any, program: Any, build_dir: Path) -> list["Artifact"]:
    """`target.lower` into build_dir/<id>/, checking that it left the program untouched.

    Returns the artifacts with paths relative to build_dir.
    """
    before = _weights_versions(program)
    try:
        artifacts = target.lower(program, build_dir / target_id)
    except Exception as err:  # noqa: BLE001 - any crash in a target fails the compile
        if os.environ.get("OMNIC_DEBUG"):
            traceback.print_exc()
        raise CompileError(f"{target_id}: lowering failed: {type(err).__name__}: {err}"
                           " (OMNIC_DEBUG=1 shows the traceback)") from err
    if _weights_versions(program) != before:
        raise CompileError(f"{target_id}: lower() modified the program's weights; a target "
                           "must never mutate its input")
    _normalise_paths(artifacts, target_id, build_dir)
    return artifacts


def _weights_versions(program: Any) -> dict[str, int]:
    """Version counters of every tensor of the decoder and the components (bumped on write)."""
    modules = {"": program.decoder, **{f"{n}.": c.module for n, c in program.components.items()}}
    return {prefix + k: v._version for prefix, m in modules.items()
            for k, v in m.state_dict(keep_vars=True).items()}


def _normalise_paths(artifacts: list["Artifact"], target_id: str, build_dir: Path) -> None:
    for a in artifacts:
        p = Path(a.path)
        if p.is_absolute():
            p = p.relative_to(build_dir)
        elif not (build_dir / p).exists() and (build_dir / target_id / p).exists():
            p = Path(target_id) / p
        if not (build_dir / p).exists():
            raise CompileError(f"{target_id}: artifact {a.path} was not written")
        a.path = p.as_posix()
