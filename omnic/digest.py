"""sha256 of files, directories and canonical JSON: the hashes manifests and artifacts carry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a directory (sorted relative paths + file hashes)."""
    if path.is_file():
        return path.stat().st_size, file_sha256(path)
    h = hashlib.sha256()
    total = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        total += f.stat().st_size
        h.update(f"{rel}\0{file_sha256(f)}\n".encode())
    return total, h.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the form every hashed document takes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_sha256(spec_dict: dict[str, Any]) -> str:
    """sha256 of a resolved spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec_dict).encode()).hexdigest()
