"""How a compile uses the build cache (omnic.compiler.cache, keys from omnic.compiler.cache_keys).

Two kinds of entry:
- **front**: what the stages before the targets leave in the build, the golden inputs and fp32
  reference (golden/), with the model-level pass records, the calibration report and the choice
  of `quantization: auto`. Used only when every target is cached too: then the compile builds no
  model at all.
- **target**: one target's folder and the golden references its checks wrote or read, with its
  manifest entries (artifact, golden result) and its own pass records. Stored after the target's
  golden check when nothing of it failed; a failed or crashed target is rebuilt next time.

The manifest of a build from the cache is the manifest the cached work wrote, byte for byte,
apart from `timings` (where a cached target's stage is named `<target>: cached`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from omnic.compiler import cache_keys
from omnic.compiler import manifest as mf
from omnic.compiler.cache import CACHED, BuildCache, Entry  # noqa: F401 - CACHED for pipeline
from omnic.constants import GoldenStatus
from omnic.golden.check import GOLDEN_DIR

if TYPE_CHECKING:
    from omnic.golden.check import GoldenResult
    from omnic.targets.base import Artifact

_log = logging.getLogger(__name__)


@dataclass
class TargetResult:
    """One target's share of the manifest."""

    target: str
    entries: list[mf.ArtifactEntry]
    passes: list[list[dict[str, Any]]]  # per entry, the target's own passes: id, changed, seconds
    cached: bool = False
    golden_files: set[str] = field(default_factory=set)  # build-relative files its checks used

    @property
    def passed(self) -> bool:
        return all(e.golden.status != GoldenStatus.FAILED for e in self.entries)


def artifact_entry(a: "Artifact", g: "GoldenResult", build_dir: Path) -> mf.ArtifactEntry:
    nbytes, sha = mf.path_digest(build_dir / a.path)
    return mf.ArtifactEntry(
        component=a.component, target=a.target, path=a.path, bytes=nbytes, sha256=sha,
        precision=a.precision, signature=mf.jsonable(a.signature),
        op_histogram=dict(sorted(a.op_histogram.items())), quantization=mf.jsonable(a.quantization),
        details=mf.jsonable(a.details),
        golden=mf.GoldenEntry(status=g.status, reason=g.reason, metrics=g.metrics,
                              reference=g.reference, limits=g.limits),
    )


def built(target: str, results: list[tuple["Artifact", "GoldenResult"]], build_dir: Path,
          golden_mark: int) -> TargetResult:
    """The TargetResult of a target just lowered and checked; `golden_mark`: golden.store's
    writes() before it started (the references it saved are those written since, the ones it
    reused are named by its golden results)."""
    from omnic.golden import store

    entries = [artifact_entry(a, g, build_dir) for a, g in results]
    used = {p.relative_to(build_dir).as_posix() for p in store.written_since(golden_mark)
            if p.is_relative_to(build_dir)}
    used |= {e.golden.reference for e in entries
             if e.golden.reference and (build_dir / e.golden.reference).is_file()}
    return TargetResult(target, entries, [
        [{"id": r.id, "changed": r.changed, "seconds": r.seconds} for r in a.passes]
        for a, _ in results], golden_files=used)


def golden_files(build_dir: Path) -> list[str]:
    """Build-relative paths of the build's golden files."""
    root = build_dir / GOLDEN_DIR
    return sorted(p.relative_to(build_dir).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".")) if root.is_dir() else []


class CompileCache:
    """The build cache as one compile uses it: keys computed once, entries read and written."""

    def __init__(self, store: BuildCache, spec_dir: Path, extra_passes: Iterable[str],
                 read: bool = True):
        self.store, self.spec_dir = store, spec_dir
        self.extra_passes = list(extra_passes)
        self.read = read  # False: recompute everything (--dump-dir), still store the results
        self.keys: dict[str, str] = {}
        self.front_files: set[str] = set()

    def _get(self, key: str) -> Entry | None:
        return self.store.get(key) if self.read else None

    # -- front -------------------------------------------------------------------------------
    def front(self, spec: dict[str, Any], targets: list[str]) -> Entry | None:
        self.keys["front"] = cache_keys.front_key(spec, self.spec_dir, targets,
                                                  self.extra_passes, self.store.root)
        return self._get(self.keys["front"])

    def store_front(self, build_dir: Path, name: str, pass_records: list[Any],
                    calibration: dict[str, Any] | None, auto: dict[str, Any] | None) -> None:
        files = {rel: build_dir / rel for rel in golden_files(build_dir)}
        self.front_files = set(files)  # the targets' entries leave these to the front
        self.store.put(self.keys["front"], "front", {"spec": name}, mf.jsonable({
            "passes": [{"id": r.id, "changed": r.changed, "seconds": r.seconds}
                       for r in pass_records],
            "calibration": calibration, "auto": auto}), files)

    # -- targets -----------------------------------------------------------------------------
    def target(self, spec: dict[str, Any], target: str, reads: Any = None) -> Entry | None:
        """`reads`: the target's cache_inputs(spec), when it has one (cache_keys.target_key)."""
        self.keys[target] = cache_keys.target_key(spec, self.spec_dir, target,
                                                  self.extra_passes, self.store.root, reads)
        return self._get(self.keys[target])

    def restore_target(self, entry: Entry, build_dir: Path) -> TargetResult | None:
        """The target's result with its files in the build; None when the entry went away
        since it was found (`omnic cache prune` meanwhile): the target is then built."""
        try:
            self.store.restore(entry, build_dir)
        except OSError as err:
            _log.warning(f"cache: entry {entry.key[:12]} could not be read ({err}); "
                         "building the target")
            return None
        p = entry.payload
        return TargetResult(p["target"], [mf.ArtifactEntry.model_validate(e)
                                          for e in p["entries"]], p["passes"], cached=True)

    def store_target(self, build_dir: Path, name: str, result: TargetResult) -> None:
        if not result.passed:
            return
        t = result.target
        folder = build_dir / t
        files = {p.relative_to(build_dir).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        files.update({rel: build_dir / rel for rel in result.golden_files
                      if rel not in self.front_files})
        self.store.put(self.keys[t], "target", {"spec": name, "target": t}, {
            "target": t, "entries": [e.model_dump(mode="json") for e in result.entries],
            "passes": result.passes}, files)
