"""The files a spec names, by content: each path field replaced by the sha256 of its bytes.

What an artifact embeds of its spec (GGUF's `omnic.spec`) and what the build cache keys on must
not depend on where a checkpoint lies, only on what it holds: moving a checkpoint changes no
artifact byte and rebuilds nothing; changing one byte of it does both.

Torch-free. File digests are remembered by (resolved path, device, inode, size, mtime, ctime) in
PROCESS_MEMO (the build cache saves it in its folder), so an unchanged 1 GB checkpoint is read
once. A folder (a Hugging Face checkpoint) is the files directly in it, hidden ones left out.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, MutableMapping

from omnic.digest import file_sha256
from omnic.spec.extends import FILE_FIELDS, NOT_FILES

PROCESS_MEMO: dict[str, str] = {}  # the default memo (the build cache loads its own into it)


def with_file_digests(spec: dict[str, Any], spec_dir: Path,
                      memo: MutableMapping[str, str] | None = None, read: bool = True
                      ) -> dict[str, Any]:
    """A copy of a resolved spec's JSON form where each file field holds {"sha256", "bytes"} of
    the file (a folder: of its files) instead of its path. A missing or unreadable file keeps
    its path (the build that reads it says what is wrong).
    read=False: the same form with a zero sha256, without reading (a size model's input)."""
    out = copy.deepcopy(spec)
    memo = PROCESS_MEMO if memo is None else memo
    for fpath in FILE_FIELDS:
        node = out
        for key in fpath[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(fpath[-1]) if isinstance(node, dict) else None
        if not isinstance(value, str) or value in NOT_FILES:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else Path(spec_dir) / path
        try:
            if path.exists():
                node[fpath[-1]] = content_digest(path, memo) if read else {
                    "bytes": sum(f.stat().st_size for f in _files(path)), "sha256": "0" * 64}
        except OSError:  # unreadable: it keeps its path, and the build reports the file
            continue
    return out


def content_digest(path: Path, memo: MutableMapping[str, str]) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file, or of a folder (its files, `_files`)."""
    if path.is_file():
        size, sha = _file(path, memo)
        return {"bytes": size, "sha256": sha}
    h, total = hashlib.sha256(), 0
    for f in _files(path):
        size, sha = _file(f, memo)
        total += size
        h.update(f"{f.relative_to(path).as_posix()}\0{sha}\n".encode())
    return {"bytes": total, "sha256": h.hexdigest()}


def _files(path: Path) -> list[Path]:
    """A file, or the files directly in a folder (a checkpoint folder's shards, config and
    tokenizer), not hidden ones: not what a build or a spec beside them puts in subfolders."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _file(path: Path, memo: MutableMapping[str, str]) -> tuple[int, str]:
    # ctime: a rewrite that puts the old mtime back (rsync --inplace -t, touch -r) still moves it
    st = path.stat()
    stamp = (f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
             f"\0{st.st_ctime_ns}")
    if stamp not in memo:
        memo[stamp] = file_sha256(path)
    return st.st_size, memo[stamp]
