"""The lower stage for one target: its artifacts, and the checks every target is held to.

The stage owns the loop over components: `target.lower` writes the decoder, then
`target.lower_component` writes each of `program.components` (encoders, heads) in the contract's
order (omnic.targets.components.components_of), all into BUILD/<target id>/.

A target must not mutate the program it lowers (its weights' version counters are compared
before and after each call), and every artifact path it returns must exist under the build
directory.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from omnic.compiler.errors import CompileError
from omnic.targets.components import components_of

if TYPE_CHECKING:
    from omnic.targets.base import Artifact

_log = logging.getLogger(__name__)


def lower_target(target_id: str, target: Any, program: Any, build_dir: Path) -> list["Artifact"]:
    """`target.lower` (the decoder), then `target.lower_component` for every component, into
    build_dir/<id>/, checking that neither left the program untouched.

    Returns the artifacts, the decoder's first, with paths relative to build_dir.
    """
    out_dir = build_dir / target_id
    artifacts = list(_lower_checked(target_id, "lower()", program,
                                    lambda: target.lower(program, out_dir)))
    for comp in components_of(program):
        lower_one = getattr(target, "lower_component", None)
        if lower_one is None:
            raise CompileError(f"{target_id}: cannot lower the {comp.name}: the target has no "
                               "lower_component (its check() should have refused the spec)")
        artifact = _lower_checked(target_id, f"lower_component({comp.name!r})", program,
                                  lambda name=comp.name: lower_one(program, name, out_dir))
        _log.info(f"{target_id}: {comp.name} → {artifact.path} ({artifact.precision}, "
                  f"{sum(artifact.op_histogram.values())} ops)")
        artifacts.append(artifact)
    _normalise_paths(artifacts, target_id, build_dir)
    return artifacts


def _lower_checked(target_id: str, call: str, program: Any, lower: Callable[[], Any]) -> Any:
    """`lower()`, a crash turned into CompileError, and the program's weights checked unchanged."""
    before = _weights_versions(program)
    try:
        result = lower()
    except Exception as err:  # noqa: BLE001 - any crash in a target fails the compile
        if os.environ.get("OMNIC_DEBUG"):
            traceback.print_exc()
        raise CompileError(f"{target_id}: lowering failed: {type(err).__name__}: {err}"
                           " (OMNIC_DEBUG=1 shows the traceback)") from err
    if _weights_versions(program) != before:
        raise CompileError(f"{target_id}: {call} modified the program's weights; a target "
                           "must never mutate its input")
    return result


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
