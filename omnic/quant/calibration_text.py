"""Calibration text for calibrated int4 quantization (GPTQ, AWQ): passages and token windows.

The text is either omnic's built-in corpus (`BUILTIN`: the files of `omnic/quant/calibration/`,
original prose, technical text, code and several languages, disjoint from the golden texts) or a
UTF-8 file of the user's. In both, independent passages are separated by a line `---` (written as
a blank line, `---`, a blank line). Torch-free; the files are read as package data, so this works
from an installed wheel too.
"""

from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path

BUILTIN = "builtin"

_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def split_passages(text: str) -> list[str]:
    """The passages of `text`: split on lines `---`, stripped, empty ones dropped."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    return [p.strip() for p in _SEPARATOR.split(text) if p.strip()]


def builtin_texts() -> list[str]:
    """Every passage of every built-in corpus file, in file-name order.

    Returns:
        The passages, stripped and non-empty.
    """
    folder = resources.files("omnic.quant").joinpath("calibration")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)
    return [p for f in files for p in split_passages(f.read_text(encoding="utf-8"))]


def load_texts(source: str, spec_dir: Path | None = None) -> list[str]:
    """The passages of a calibration source.

    Args:
        source: `BUILTIN` for omnic's corpus, else the path of a UTF-8 text file whose
            passages are separated by lines `---`.
        spec_dir: the folder a relative `source` is resolved against (the spec's folder);
            the current directory when None.

    Returns:
        The passages, stripped and non-empty.

    Raises:
        ValueError: the file is missing or unreadable, not UTF-8, or holds no text.
    """
    if source == BUILTIN:
        return builtin_texts()
    path = Path(source).expanduser()
    if not path.is_absolute() and spec_dir is not None:
        path = Path(spec_dir) / path
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"calibration text {path}: cannot be read ({reason})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"calibration text {path}: not UTF-8 (invalid byte at offset "
                         f"{exc.start})") from exc
    passages = split_passages(text)
    if not passages:
        raise ValueError(f"calibration text {path}: the file is empty (no passage of text)")
    return passages


def samples(token_ids_of_passages: list[list[int]], n: int, seq_len: int,
            seed: int = 0) -> list[list[int]]:
    """Cut calibration windows from encoded passages.

    The passages are put in an order shuffled by `random.Random(seed)`, their ids concatenated,
    and consecutive windows of `seq_len` ids cut from the start. Rule on the count:
    - at least `n * seq_len` ids: exactly `n` windows of `seq_len` ids;
    - fewer, but at least `seq_len`: every full window there is (fewer than `n`), the
      remainder dropped;
    - fewer than `seq_len`: one window holding all the ids (shorter than `seq_len`).

    Args:
        token_ids_of_passages: the ids of each passage.
        n: windows wanted (>= 1).
        seq_len: ids per window (>= 1).
        seed: the passages' order; the same seed gives the same windows.

    Returns:
        The windows, each a list of ids.

    Raises:
        ValueError: `n` or `seq_len` is below 1, or the passages hold no token.
    """
    if n < 1 or seq_len < 1:
        raise ValueError(f"calibration needs n >= 1 and seq_len >= 1, got n={n}, "
                         f"seq_len={seq_len}")
    order = list(range(len(token_ids_of_passages)))
    random.Random(seed).shuffle(order)
    ids = [int(t) for i in order for t in token_ids_of_passages[i]]
    if not ids:
        raise ValueError("the calibration text holds no token")
    if len(ids) < seq_len:
        return [ids]
    count = min(n, len(ids) // seq_len)
    return [ids[k * seq_len:(k + 1) * seq_len] for k in range(count)]
