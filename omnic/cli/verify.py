"""`omnic verify OUT_DIR [--targets onnx,coreml]` — re-run the golden checks of an existing build.

Uses only the build: manifest.json, the artifacts and golden/ (inputs and reference outputs),
so it runs without torch, e.g. on a Mac to check a Core ML artifact built on Linux. The build
itself is not modified.

First every file the manifest lists (the artifacts checked, and golden/) is hashed and compared
with the manifest's sha256; any difference is reported as `modified PATH: expected sha256 ...,
actual ...` and ends the command with status 1 without the numeric re-check, whose numbers would
describe files the build did not make.

Exit status 0 when nothing failed (not_run is reported), 1 when a file was modified or a check
failed, 2 when the build cannot be read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnic.compiler.manifest import ArtifactEntry, Manifest


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="re-run the golden checks of a build",
                              description="Compare every file the manifest lists with its "
                              "sha256 (a modified file fails the command), then re-run every "
                              "artifact's golden check from the build's saved golden inputs and "
                              "reference outputs.")
    p.add_argument("build", metavar="OUT_DIR", help="build directory")
    p.add_argument("--targets", help="comma-separated target ids (default: all in the build)")
    p.set_defaults(func=run)


def _selected(manifest: "Manifest", targets: list[str] | None) -> list["ArtifactEntry"]:
    """The manifest's artifacts of `targets` (all of them when None)."""
    return [e for e in manifest.artifacts if not targets or e.target in targets]


def verify_build(build_dir: Path, targets: list[str] | None = None,
                 manifest: "Manifest | None" = None):
    """Re-check each artifact. Returns (manifest, [(entry, GoldenResult)]).

    `manifest`: the build's, when the caller has read it already."""
    from omnic.compiler import manifest as mf
    from omnic.compiler.artifact_runner import artifact_from_entry
    from omnic.golden.check import GoldenResult, verify_artifact
    from omnic.golden.components import verify_component
    from omnic.constants import Components, GoldenStatus
    from omnic.targets.base import get_target

    manifest = mf.load(build_dir) if manifest is None else manifest
    overrides = manifest.spec.get("golden", {}).get("tolerances", {})
    results = []
    for entry in _selected(manifest, targets):
        if entry.golden.reference is None:  # never compared (e.g. bad reference weights)
            results.append((entry, GoldenResult(GoldenStatus.FAILED, entry.golden.reason)))
            continue
        try:
            target = get_target(entry.target)
        except (KeyError, ImportError) as err:
            results.append((entry, GoldenResult(GoldenStatus.NOT_RUN,
                                                f"target unavailable: {err}")))
            continue
        verify = verify_artifact if entry.component == Components.DECODER else verify_component
        recorded = ({"limits": entry.golden.limits}
                    if entry.component == Components.DECODER else {})
        results.append((entry, verify(target, artifact_from_entry(entry), build_dir,
                                      entry.golden.reference, overrides, **recorded)))
    return manifest, results


def run(args) -> int:
    from pydantic import ValidationError
    from rich.console import Console

    from omnic.cli.inspect import artifact_table, print_reasons
    from omnic.compiler import manifest as mf
    from omnic.compiler.artifact_runner import manifest_files, modified_files

    build_dir = Path(args.build)
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    try:
        manifest = mf.load(build_dir)
        # the artifacts checked and golden/: numbers re-run on other files would mean nothing
        modified = modified_files(build_dir, manifest_files(manifest, _selected(manifest, targets)))
        if modified:
            for m in modified:
                print(f"modified {m}")
            print(f"error: {build_dir}: {len(modified)} file(s) differ from the manifest's "
                  "sha256; the golden checks were not re-run", file=sys.stderr)
            return 1
        manifest, results = verify_build(build_dir, targets, manifest)
    except FileNotFoundError as err:
        print(f"error: {build_dir}: {err.strerror or err}: {err.filename or ''}", file=sys.stderr)
        return 2
    except (ValidationError, ValueError) as err:
        print(f"error: {build_dir}: not a valid omnic build: {err}", file=sys.stderr)
        return 2
    if not results:
        print(f"error: no artifact of {targets} in {build_dir}", file=sys.stderr)
        return 2
    # Show the re-run results in the manifest's table layout (in memory only).
    rerun = manifest.model_copy(deep=True)
    rerun.artifacts = []
    for entry, g in results:
        e = entry.model_copy(deep=True)
        e.golden = mf.GoldenEntry(status=g.status, reason=g.reason, metrics=g.metrics,
                                  reference=g.reference, limits=g.limits)
        rerun.artifacts.append(e)
    rerun.status = mf.overall_status(rerun.artifacts)
    console = Console()
    console.print(artifact_table(rerun, title=f"verify {build_dir}: {rerun.status}"))
    print_reasons(rerun, console)
    return 1 if rerun.status == "failed" else 0
