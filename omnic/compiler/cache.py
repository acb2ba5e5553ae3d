"""The build cache: content-addressed entries of finished work, written atomically, verified on use.

An entry is a folder `ROOT/entries/<key>/` holding the files of one piece of a build (a target's
artifacts and golden references, or the reference stage's golden files) under their
build-relative paths, and `entry.json`: the key, what the entry is, every file's sha256 and the
payload the pipeline needs to write the manifest without redoing the work. `entry.sha256` holds
the sha256 of `entry.json` itself.

- Writing: the entry is assembled in `ROOT/tmp/` and renamed into place, so a reader sees a whole
  entry or none; when two writers race for one key, the first rename wins.
- Reading: `get` checks `entry.sha256` and every file's sha256 before it hands out the entry. A
  corrupt entry is removed and reported as a miss (the work is redone, never the damage used).
- Using an entry touches `entry.json`'s mtime: `prune` removes the least recently used first.

The keys are made by omnic.compiler.cache_keys; this module knows nothing of specs or targets.
Where: `cache=` of `compile()`, else $OMNIC_CACHE_DIR, else $XDG_CACHE_HOME/omnic/builds
(~/.cache/omnic/builds); OMNIC_CACHE=off turns the default cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omnic.digest import canonical_json, file_sha256

_log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
ENTRY_FILE, ENTRY_DIGEST, FILES_DIR = "entry.json", "entry.sha256", "files"
ENV_DIR, ENV_SWITCH = "OMNIC_CACHE_DIR", "OMNIC_CACHE"
STALE_TMP_SECONDS = 3600
CACHED = "cached"  # a target taken from the cache: its timing stage is "<target>: cached"


def default_root() -> Path | None:
    """$OMNIC_CACHE_DIR, else the user cache folder; None when OMNIC_CACHE=off."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omnic" / "builds"


def open_cache(setting: "str | Path | bool | None") -> "BuildCache | None":
    """The cache `compile(cache=...)` names: None the default, False none, else a folder."""
    if setting is False:
        return None
    root = default_root() if setting is None or setting is True else Path(setting).expanduser()
    return BuildCache(root) if root is not None else None


@dataclass(frozen=True)
class Entry:
    """One verified entry."""

    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        return self.meta["payload"]

    @property
    def files(self) -> dict[str, str]:
        return self.meta["files"]


@dataclass(frozen=True)
class EntryInfo:
    """An entry as `omnic cache ls` shows it (not verified)."""

    key: str
    kind: str
    label: dict[str, Any]
    bytes: int
    created: float
    used: float


class BuildCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def get(self, key: str) -> Entry | None:
        """The entry of `key` when it exists and every byte is as written; else None."""
        path = self._dir(key)
        if not (path / ENTRY_FILE).is_file():
            return None
        problem, meta = _verify(path, key)
        if problem is not None:
            _log.warning(f"cache: entry {key[:12]} is corrupt ({problem}); rebuilding it")
            shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            os.utime(path / ENTRY_FILE)  # last used, for prune
        except OSError:
            pass  # a read-only or shared cache: the entry is still sound
        return Entry(key, path, meta)

    def put(self, key: str, kind: str, label: Mapping[str, Any], payload: Mapping[str, Any],
            files: Mapping[str, Path]) -> None:
        """Store `files` (build-relative path -> file to copy) and `payload` under `key`.

        A failure to write (a full disk) is logged and leaves no entry: the build itself does
        not depend on the cache.
        """
        final = self._dir(key)
        if final.exists():
            return
        tmp = self.root / "tmp" / f"{key[:12]}-{uuid.uuid4().hex}"
        try:
            digests, total = {}, 0
            for rel, src in sorted(files.items()):
                dst = tmp / FILES_DIR / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                digests[rel] = file_sha256(dst)
                total += dst.stat().st_size
            meta = {"format": ENTRY_FORMAT, "key": key, "kind": kind, "label": dict(label),
                    "created": time.time(), "bytes": total, "files": digests,
                    "payload": dict(payload)}
            text = json.dumps(meta, indent=1, sort_keys=True).encode()
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / ENTRY_FILE).write_bytes(text)
            (tmp / ENTRY_DIGEST).write_text(hashlib.sha256(text).hexdigest() + "\n")
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():  # not a lost race: a real failure
                    raise
        except OSError as err:
            _log.warning(f"cache: could not store entry {key[:12]} in {self.root}: {err}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, entry: Entry, build_dir: Path) -> None:
        """Copy an entry's files into a build directory, at their build-relative paths."""
        for rel in entry.files:
            dst = build_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry.path / FILES_DIR / rel, dst)

    def entries(self) -> list[EntryInfo]:
        """Every entry, most recently used first."""
        out = []
        for path in sorted((self.root / "entries").glob("*")) if self.root.is_dir() else []:
            try:
                meta = json.loads((path / ENTRY_FILE).read_text())
                used = (path / ENTRY_FILE).stat().st_mtime
            except (OSError, ValueError):
                meta, used = {"kind": "corrupt", "label": {}, "bytes": _du(path)}, 0.0
            out.append(EntryInfo(path.name, meta.get("kind", "?"), meta.get("label", {}),
                                 int(meta.get("bytes", 0)), float(meta.get("created", 0.0)),
                                 used))
        return sorted(out, key=lambda e: -e.used)

    def prune(self, max_bytes: int) -> list[EntryInfo]:
        """Keep the most recently used entries that fit in `max_bytes` together and remove the
        rest (from the first that does not fit on); also what an interrupted write left in
        tmp/ more than an hour ago (a younger one may be a compile writing now). Returns the
        entries removed."""
        for t in (self.root / "tmp").glob("*") if (self.root / "tmp").is_dir() else []:
            if time.time() - t.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(t, ignore_errors=True)
        removed, total, full = [], 0, False
        for e in self.entries():
            full = full or e.kind == "corrupt" or total + e.bytes > max_bytes
            if full:
                removed.append(e)
                shutil.rmtree(self._dir(e.key), ignore_errors=True)
            else:
                total += e.bytes
        return removed


def _verify(path: Path, key: str) -> tuple[str | None, dict[str, Any]]:
    """(None, meta) for a sound entry, else (what is wrong, {})."""
    try:
        text = (path / ENTRY_FILE).read_bytes()
        digest = (path / ENTRY_DIGEST).read_text().strip()
    except OSError as err:
        return f"unreadable: {err}", {}
    if hashlib.sha256(text).hexdigest() != digest:
        return f"{ENTRY_FILE} does not match {ENTRY_DIGEST}", {}
    meta = json.loads(text)
    if meta.get("format") != ENTRY_FORMAT or meta.get("key") != key:
        return "written by another cache format", {}
    for rel, sha in meta["files"].items():
        f = path / FILES_DIR / rel
        if not f.is_file():
            return f"{rel} is missing", {}
        if file_sha256(f) != sha:
            return f"{rel} does not match its sha256", {}
    return None, meta


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def digest_of(value: Any) -> str:
    """The key of a JSON-able value: sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
