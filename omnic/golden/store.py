"""Byte-stable .npz files for golden data (numpy's savez stamps the current time into the zip).

The build's golden/ files are hashed into the manifest, so two compiles of one spec must write
identical bytes: entries are sorted by name and carry a fixed timestamp.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_written: list[Path] = []  # every file save_npz wrote in this process, in order


def writes() -> int:
    """A mark for `written_since`."""
    return len(_written)


def written_since(mark: int) -> list[Path]:
    """The files this process saved since `writes()` returned `mark` (what one target's golden
    check wrote, for the build cache)."""
    return list(_written[mark:])


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to `path` as an uncompressed .npz readable by `np.load`.

    Written beside `path` and renamed into place: targets checked in parallel processes
    (`compile --jobs`) may save the same quantization-exact reference at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)
    _written.append(path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
