"""Open a compiled artifact from a build directory as a Runner (for `omnic run BUILD_DIR
--target X`, `omnic verify` and `omnic bench`), using only the manifest and the Target interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omnic.compiler import manifest as mf
from omnic.constants import Components

if TYPE_CHECKING:
    from omnic.targets.base import Artifact, Runner


class BuildError(ValueError):
    """The build directory has no such artifact, or no readable manifest."""


def artifact_from_entry(entry: mf.ArtifactEntry) -> "Artifact":
    """Rebuild the Artifact a target returned from its manifest entry (no reference weights)."""
    from omnic.targets.base import Artifact

    return Artifact(
        component=entry.component, target=entry.target, path=entry.path,
        signature=dict(entry.signature), op_histogram=dict(entry.op_histogram),
        quantization=dict(entry.quantization), details=dict(entry.details),
        precision=entry.precision,
    )


def find_entry(manifest: mf.Manifest, target: str, component: str = Components.DECODER,
               ) -> mf.ArtifactEntry:
    matches = [a for a in manifest.artifacts if a.target == target and a.component == component]
    if not matches:
        have = sorted({f"{a.target}/{a.component}" for a in manifest.artifacts})
        raise BuildError(f"the build has no {target}/{component} artifact (it has: "
                         f"{', '.join(have) or 'none'})")
    return matches[0]


def open_build_runner(build_dir: str | Path, target: str, component: str = Components.DECODER,
                      ) -> "Runner":
    """A Runner over the `component` artifact that `target` wrote into `build_dir`.

    Raises:
        BuildError: no manifest, or no such artifact in it.
        omnic.targets.base.NotRunnable: this host cannot run the artifact.
    """
    from omnic.targets.base import get_target

    build_dir = Path(build_dir)
    try:
        manifest = mf.load(build_dir)
    except FileNotFoundError:
        raise BuildError(f"{build_dir}: no {mf.MANIFEST_FILE}; is it an omnic build?") from None
    entry = find_entry(manifest, target, component)
    return get_target(target).load(artifact_from_entry(entry), build_dir)
