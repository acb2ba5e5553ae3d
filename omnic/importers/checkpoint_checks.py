"""Checkpoint and tokenizer files checked as input, before anything is built (torch-free).

`omnic validate`, `omnic plan` and the validate stage of `omnic compile` open every file a spec
names and check it the way the build will read it, so that a broken file is an error naming the
file and the problem (exit status 2, nothing written), never a traceback halfway through a
compile:

- safetensors, one file in omnic's names or a Hugging Face directory (its index and every shard):
  the header, read by safetensors itself, which refuses a truncated file; float dtypes; and the
  tensors against the spec's inventory, renamed and split exactly as the build does
  (`omnic.importers.hf_weights.read_plan`, `omnic.importers.checkpoint.check_weights`);
- GGUF: the header and tensor index, read by gguf-py's GGUFReader, and every tensor the spec's
  model needs (`omnic.formats.gguf_arch.tensor_plan`) with its shape;
- every tensor the build reads is scanned for NaN and Inf, one memory-mapped tensor and one chunk
  at a time, until SCAN_SECONDS have passed (a warning then says what was left unscanned);
- tokenizer.json and tokenizer_config.json parse as JSON; an encoder checkpoint's every header.
"""

from __future__ import annotations

import math

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from omnic.importers.checkpoint import WeightError, check_weights
from omnic.importers.hf import UnsupportedModel

if TYPE_CHECKING:
    from omnic.spec import Model
    from omnic.spec.inventory import TensorInfo

# Seconds the NaN/Inf scan may take in one validation: ~1 GB/s from the page cache, so a
# checkpoint of tens of GB is scanned in part, and the warning says so.
SCAN_SECONDS = 60.0
_CHUNK = 1 << 22  # elements per scan step: bounds the temporaries to a few tens of MiB

# Float storage as unsigned words: a value is NaN or Inf when its exponent bits are all ones (NaN
# when its mantissa is not zero). Works for bf16 too, which numpy has no dtype for.
_FLOAT_BITS = {
    "F64": (np.uint64, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF),
    "F32": (np.uint32, 0x7F80_0000, 0x007F_FFFF),
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
}

Finding = tuple[str, str]  # (severity, message); the caller attaches the spec field


class BadFile(ValueError):
    """A file cannot be read as what the spec says it is."""


@dataclass(frozen=True)
class Stored:
    """One tensor of a safetensors file: name, dtype, numpy shape, byte range in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class Clock:
    """The scan's time budget, shared by every file of one validation."""

    def __init__(self, seconds: float | None = None):
        self.seconds = SCAN_SECONDS if seconds is None else seconds
        self.deadline = time.monotonic() + self.seconds

    def out(self) -> bool:
        return time.monotonic() > self.deadline


# --- safetensors ---------------------------------------------------------------------------------
def _safetensors_problem(path: Path, size: int, err: Exception) -> str:
    text = str(err)
    if size == 0:
        return f"{path}: empty file (0 bytes), not a safetensors file"
    if size < 8:
        return f"{path}: truncated: {size} bytes, fewer than the 8-byte header length"
    if "incomplete metadata" in text or "not fully covered" in text:
        return f"{path}: truncated: {size:,} bytes, fewer than its header describes"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") > size:
        return f"{path}: truncated inside its header ({size:,} bytes)"
    detail = text.removeprefix("Error while deserializing header: ")
    return f"{path}: not a safetensors file ({detail})"


def safetensors_index(path: Path) -> list[Stored]:
    """The tensors of a .safetensors file in file order, with their byte ranges.

    safetensors' own reader checks the header and that the tensors tile the data exactly (a
    truncated file fails here); the byte ranges are then the header's `data_offsets`, which its
    Python API does not expose, read from the validated header with `json`.

    Raises:
        BadFile: empty, truncated, or not a safetensors file (the message says which).
    """
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = {n: (f.get_slice(n).get_dtype(), tuple(f.get_slice(n).get_shape()))
                    for n in f.keys()}
    except SafetensorError as err:
        raise BadFile(_safetensors_problem(path, size, err)) from None
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    base = 8 + length
    out = [Stored(n, dtype, shape, base + header[n]["data_offsets"][0],
                  base + header[n]["data_offsets"][1]) for n, (dtype, shape) in meta.items()]
    return sorted(out, key=lambda t: t.start)


def _missing_reader(path: Path, module: str, extra: str) -> Iterator[Finding]:
    """A warning when the library that reads `path` is not installed (a bare `omnic validate`
    install): the file is then checked by the build, which needs it anyway."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        yield "warning", f"{path}: not checked: {module} is not installed (omnic[{extra}])"


def _first_bad(words: np.ndarray, exponent: int, mantissa: int, clock: Clock
               ) -> tuple[int, str] | None | bool:
    """(flat index, "NaN" | "Inf") of the first non-finite word, None when all are finite,
    False when the clock ran out."""
    exp = words.dtype.type(exponent)
    for i in range(0, words.size, _CHUNK):
        chunk = words[i : i + _CHUNK]
        hits = np.flatnonzero((chunk & exp) == exp)
        if hits.size:
            j = i + int(hits[0])
            return j, "NaN" if int(words[j]) & mantissa else "Inf"
        if clock.out():
            return False
    return None


def _where(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(flat, shape))}]"


def _scan_safetensors(path: Path, tensors: list[Stored], canonical: Callable[[str], str | None],
                      clock: Clock) -> Iterator[Finding]:
    """NaN/Inf in `tensors` of `path`, each memory-mapped alone (its pages released after)."""
    for k, t in enumerate(tensors):
        if t.end == t.start or t.dtype not in _FLOAT_BITS:
            continue
        if clock.out():
            yield _unscanned(path, tensors[k:], clock)
            return
        uint, exponent, mantissa = _FLOAT_BITS[t.dtype]
        words = np.memmap(path, dtype=uint, mode="r", offset=t.start,
                          shape=((t.end - t.start) // np.dtype(uint).itemsize,))
        bad = _first_bad(words, exponent, mantissa, clock)
        del words
        if bad is False:
            yield _unscanned(path, tensors[k:], clock)
            return
        if bad is not None:
            flat, kind = bad
            also = canonical(t.name)
            also = f" ({also})" if also and also != t.name else ""
            yield "error", f"{path}: {kind} at {_where(t.name, t.shape, flat)}{also}"
            return


def _unscanned(path: Path, left: list[Any], clock: Clock) -> Finding:
    name = getattr(left[0], "name", left[0])
    return "warning", (f"{path}: NaN/Inf scan stopped after {clock.seconds:g} s; {len(left)} "
                       f"tensors from {name} on are unchecked")


def _dtypes(path: Path, tensors: list[Stored]) -> Iterator[Finding]:
    bad = [t for t in tensors if t.dtype not in _FLOAT_BITS]
    if bad:
        listed = ", ".join(f"{t.name} ({t.dtype})" for t in bad[:4])
        yield "error", (f"{path}: {len(bad)} tensors are not floating point (F32, F16, BF16, "
                        f"F64): {listed}{' ...' if len(bad) > 4 else ''}")


def check_safetensors(path: Path, inventory: list["TensorInfo"], clock: Clock
                      ) -> Iterator[Finding]:
    """A `weights: {source: safetensors}` file: header, dtypes, coverage, finite values."""
    missing = list(_missing_reader(path, "safetensors", "torch"))
    if missing:
        yield from missing
        return
    try:
        tensors = safetensors_index(path)
    except BadFile as err:
        yield "error", str(err)
        return
    try:
        check_weights({t.name: t for t in tensors}, inventory, str(path))
    except WeightError as err:
        yield "error", str(err)
        return
    want = {t.name for t in inventory}
    read = [t for t in tensors if t.name in want]
    problems = list(_dtypes(path, read))
    yield from problems
    if not problems:
        yield from _scan_safetensors(path, read, lambda name: None, clock)


class _Shape:
    """A tensor's shape standing in for the tensor in `hf_weights`' splitters, which only index
    and chunk along the first axis, and reshape."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def __getitem__(self, key: int | slice) -> "_Shape":
        if isinstance(key, slice):
            return _Shape((len(range(*key.indices(self.shape[0]))), *self.shape[1:]))
        return _Shape(self.shape[1:])

    def reshape(self, *shape: int) -> "_Shape":
        known = math.prod(n for n in shape if n != -1)
        return _Shape(tuple(math.prod(self.shape) // known if n == -1 else n for n in shape))

    def chunk(self, n: int, dim: int = 0) -> list["_Shape"]:
        assert dim == 0, "hf_weights' splitters chunk rows only"
        size, rows = max(1, -(-self.shape[0] // n)), self.shape[0]  # 0 rows: no pieces
        return [_Shape((min(size, rows - i), *self.shape[1:])) for i in range(0, rows, size)]


def check_hf_dir(hf_dir: Path, inventory: list["TensorInfo"], clock: Clock) -> Iterator[Finding]:
    """A `weights: {source: huggingface}` directory: index, every shard's header, the tensors as
    the build renames them against the inventory, dtypes and finite values."""
    from omnic.importers.hf_weights import read_plan

    indexes: dict[Path, list[Stored]] = {}
    problems = list(_missing_reader(hf_dir, "safetensors", "torch")) or list(
        _shards(hf_dir, indexes))
    yield from problems
    if problems:
        return
    try:
        plan = read_plan(hf_dir, inventory)
        shapes: dict[str, Any] = {}
        names: dict[str, str] = {}
        for path, wanted in plan.files:
            stored = {t.name: t for t in indexes[path]}
            for hf_name, target in wanted.items():
                pieces = ([(target, stored[hf_name])] if isinstance(target, str)
                          else target(_Shape(stored[hf_name].shape)))
                for name, piece in pieces:
                    shapes[name] = piece
                if isinstance(target, str):
                    names[hf_name] = target
        check_weights(shapes, inventory, f"{hf_dir} ({plan.arch})")
    except (WeightError, UnsupportedModel) as err:
        yield "error", str(err)
        return
    for path, wanted in plan.files:
        read = [t for t in indexes[path] if t.name in wanted]
        problems = list(_dtypes(path, read))
        yield from problems
        if not problems:
            found = list(_scan_safetensors(path, read, names.get, clock))
            yield from found
            if found:
                return


def _shards(folder: Path, indexes: dict[Path, list[Stored]]) -> Iterator[Finding]:
    """The index (when sharded) and every safetensors file of a Hugging Face directory, each
    file's tensors put in `indexes`; a finding for each one that cannot be read."""
    from omnic.importers.hf_weights import checkpoint_files

    index = folder / "model.safetensors.index.json"
    try:
        files = checkpoint_files(folder)
    except json.JSONDecodeError as err:
        yield "error", f"{index}: not valid JSON ({err})"
        return
    except WeightError as err:
        yield "error", str(err)
        return
    except (AttributeError, TypeError, ValueError) as err:  # weight_map is not a mapping
        yield "error", f"{index}: no weight_map mapping tensor names to files ({err})"
        return
    for f in files:
        if not f.is_file():
            yield "error", f"{f}: shard listed in the index is missing"
            continue
        try:
            indexes[f] = safetensors_index(f)
        except BadFile as err:
            yield "error", str(err)


def check_headers(folder: Path) -> Iterator[Finding]:
    """Every safetensors file of a Hugging Face directory opens (encoder checkpoints)."""
    yield from list(_missing_reader(folder, "safetensors", "torch")) or _shards(folder, {})


# --- GGUF ----------------------------------------------------------------------------------------
def _gguf_problem(path: Path, err: Exception) -> str:
    size = path.stat().st_size
    if size == 0:
        return f"{path}: empty file (0 bytes), not a GGUF file"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        return f"{path}: not a GGUF file (it does not start with the GGUF magic)"
    detail = str(err).split(": not a GGUF file (", 1)[-1].removesuffix(")")
    return f"{path}: truncated or damaged GGUF file ({size:,} bytes; gguf-py: {detail})"


def check_gguf(path: Path, model: "Model", clock: Clock) -> Iterator[Finding]:
    """A `weights: {source: gguf}` file: header and tensor index (gguf-py), truncation, every
    tensor the model needs with its shape, finite values."""
    from omnic.formats.gguf_arch import tensor_plan
    from omnic.importers.gguf import arch_plan, field, open_gguf

    missing = list(_missing_reader(path, "gguf", "gguf"))
    if missing:
        yield from missing
        return
    try:
        reader = open_gguf(path)
        arch = field(reader, "general.architecture")
    except UnsupportedModel as err:
        yield "error", _gguf_problem(path, err) if "not a GGUF file" in str(err) else str(err)
        return
    from gguf import GGMLQuantizationType as Q
    from gguf import dequantize

    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            yield "error", (f"{path}: truncated: tensor {t.name} ends at byte "
                            f"{t.data_offset + t.n_bytes:,}, the file has {size:,}")
            return
    stored = {t.name: t for t in reader.tensors}
    needed = tensor_plan(model, arch_plan(arch))
    missing = [f"{t.name} ({', '.join(t.sources)})" for t in needed if t.name not in stored]
    wrong = [f"{t.name}: {tuple(reversed(stored[t.name].shape.tolist()))} != {t.shape}"
             for t in needed if t.name in stored
             and tuple(reversed(stored[t.name].shape.tolist())) != tuple(t.shape)]
    if missing:
        yield "error", (f"{path}: weights do not match the spec's model: missing {len(missing)}: "
                        f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if wrong:
        yield "error", f"{path}: weights do not match the spec's model: wrong shape: " + \
            "; ".join(wrong[:6])
    if missing or wrong:
        return
    floats = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16", Q.F64: "F64"}
    for k, t in enumerate(needed):
        rt = stored[t.name]
        if clock.out():
            yield _unscanned(path, needed[k:], clock)
            return
        if rt.tensor_type in floats:
            uint, exponent, mantissa = _FLOAT_BITS[floats[rt.tensor_type]]
            bad = _first_bad(rt.data.reshape(-1).view(uint), exponent, mantissa, clock)
        else:  # quantized blocks: dequantized a few rows at a time (the build does it whole)
            rows = rt.data.reshape(-1, rt.data.shape[-1])
            per_row = int(rt.n_elements) // max(1, rows.shape[0])
            step = max(1, _CHUNK // max(1, per_row))
            bad = None
            for i in range(0, rows.shape[0], step):
                try:
                    values = dequantize(rows[i : i + step], rt.tensor_type).reshape(-1)
                except (NotImplementedError, ValueError) as err:  # I8, I32...: not weights
                    yield "error", (f"{path}: tensor {rt.name} of type {rt.tensor_type.name} "
                                    f"cannot be read as weights ({err})")
                    return
                hits = np.flatnonzero(~np.isfinite(values))
                if hits.size:
                    j = int(hits[0])
                    bad = (i * per_row + j, "NaN" if np.isnan(values[j]) else "Inf")
                    break
                if clock.out():
                    bad = False
                    break
        if bad is False:
            yield _unscanned(path, needed[k:], clock)
            return
        if bad is not None:
            flat, kind = bad
            yield "error", (f"{path}: {kind} at {_where(t.name, tuple(t.shape), flat)} "
                            f"({', '.join(t.sources)})")
            return


# --- tokenizer -----------------------------------------------------------------------------------
def check_tokenizer(folder: Path) -> Iterator[Finding]:
    """tokenizer.json (with a `model` section) and tokenizer_config.json parse as JSON."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError included
            yield "error", f"{path}: not valid JSON ({err})"
            continue
        if name == "tokenizer.json" and not (isinstance(data, dict)
                                             and isinstance(data.get("model"), dict)):
            yield "error", f"{path}: no `model` section: not a Hugging Face tokenizer.json"
