"""Open a compiled artifact from a build directory as a Runner (for `omnic run BUILD_DIR
--target X`, `omnic verify` and `omnic bench`), using only the manifest and the Target interface.

An artifact is opened only when its bytes are still those the manifest records (sha256, computed
by the manifest's own `path_digest`): a file changed after the compile is refused with the path
and both digests, unless the caller passes verify=False (`--no-verify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from omnic.compiler import manifest as mf
from omnic.constants import Components

if TYPE_CHECKING:
    from omnic.targets.base import Artifact, Runner


class BuildError(ValueError):
    """The build directory has no such artifact, or no readable manifest."""


MISSING = "missing"  # the `actual` digest of a listed file that is not there


@dataclass(frozen=True)
class ModifiedFile:
    """A file (or artifact directory) the manifest lists whose sha256 no longer matches."""

    path: str  # relative to the build directory
    expected: str  # sha256 the manifest records
    actual: str  # sha256 now, or MISSING

    def __str__(self) -> str:
        actual = "but the file is missing" if self.actual == MISSING else f"actual {self.actual}"
        return f"{self.path}: expected sha256 {self.expected}, {actual}"


class ArtifactModified(BuildError):
    """An artifact's bytes differ from the manifest's record (changed, truncated or missing)."""

    def __init__(self, build_dir: Path, modified: list[ModifiedFile]) -> None:
        self.modified = modified
        super().__init__(f"{build_dir}: refusing an artifact modified since the compile "
                         "(its sha256 is not the manifest's; --no-verify uses it anyway):\n"
                         + "\n".join(f"  modified {m}" for m in modified))


def modified_files(build_dir: Path, listed: Iterable[tuple[str, str]]) -> list[ModifiedFile]:
    """The (build-relative path, sha256) pairs whose file or directory now hashes otherwise."""
    out = []
    for rel, expected in listed:
        path = Path(build_dir) / rel
        actual = mf.path_digest(path)[1] if path.exists() else MISSING
        if actual != expected:
            out.append(ModifiedFile(rel, expected, actual))
    return out


def manifest_files(manifest: mf.Manifest, entries: Iterable[mf.ArtifactEntry] | None = None,
                   ) -> list[tuple[str, str]]:
    """Every (path, sha256) the manifest records: the artifacts (`entries`, default all of them)
    and the golden files."""
    chosen = manifest.artifacts if entries is None else entries
    return [(e.path, e.sha256) for e in chosen] + sorted(manifest.golden.files.items())


def check_artifacts(build_dir: Path, entries: Iterable[mf.ArtifactEntry]) -> None:
    """Raise ArtifactModified unless every entry's artifact has the digest the manifest records."""
    modified = modified_files(build_dir, [(e.path, e.sha256) for e in entries])
    if modified:
        raise ArtifactModified(Path(build_dir), modified)


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


def load_manifest(build_dir: Path) -> mf.Manifest:
    """The build's manifest; BuildError when there is none."""
    try:
        return mf.load(build_dir)
    except FileNotFoundError:
        raise BuildError(f"{build_dir}: no {mf.MANIFEST_FILE}; is it an omnic build?") from None


def open_build_runner(build_dir: str | Path, target: str, component: str = Components.DECODER,
                      verify: bool = True) -> "Runner":
    """A Runner over the `component` artifact that `target` wrote into `build_dir`.

    Args:
        build_dir: the build directory.
        target: target id.
        component: which artifact of the target.
        verify: refuse an artifact whose sha256 differs from the manifest's (see check_artifacts).

    Raises:
        BuildError: no manifest, or no such artifact in it.
        ArtifactModified: verify and the artifact's bytes are not those the manifest records.
        omnic.targets.base.NotRunnable: this host cannot run the artifact.
    """
    from omnic.targets.base import get_target

    build_dir = Path(build_dir)
    manifest = load_manifest(build_dir)
    entry = find_entry(manifest, target, component)
    if verify:
        check_artifacts(build_dir, [entry])
    return get_target(target).load(artifact_from_entry(entry), build_dir)
