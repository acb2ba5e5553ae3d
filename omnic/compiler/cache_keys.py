"""The build cache's keys: what reaches each piece of a build.

A target's key is a digest of
- the resolved spec without the other targets' options (its own stay in), where every file the
  spec names (weights, tokenizer, encoder weights, calibration text) is replaced by the digest of
  its bytes: moving a checkpoint does not rebuild, changing one byte does;
- the test-fault passes, if any;
- omnic's version and a digest of its installed sources and data (a changed rule or kernel
  rebuilds);
- the versions of the toolchain that target uses (its runtime and exporter, plus torch and numpy
  and the rest every target shares).

Every key also holds the host (system, machine, and the environment settings in ENVIRONMENT), so
a cache shared by machines keeps their entries apart (a Core ML entry made off macOS is not_run).

The front key (the reference stage's golden files, the model-level passes, calibration and
`quantization: auto`) covers the whole spec, every target being built (calibration rounds for
each target's grid), every toolchain version and the quantization presets (`auto` chooses among
them).

File digests (omnic.spec.file_digests) are remembered by (path, size, mtime, inode) in the cache
folder's `file-digests.json`, so an unchanged 1 GB checkpoint is read once, not at every compile.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omnic.compiler.cache import digest_of
from omnic.spec.file_digests import PROCESS_MEMO, with_file_digests

KEY_FORMAT = 2
# Distributions every target's output depends on; the rest are per target below (a target may
# name its own with `cache_inputs(spec)`, as ExecuTorch does for its Core ML delegate).
COMMON = ("python", "torch", "numpy", "tokenizers", "safetensors", "transformers", "ml-dtypes")
PER_TARGET = {
    "onnx": ("onnx", "onnxscript", "onnx-ir", "onnxruntime", "onnxruntime-genai"),
    "gguf": ("gguf", "llama-cpp-python"),
    "executorch": ("executorch", "torchao"),
    "coreml": ("coremltools",),
    "tvm": ("apache-tvm",),
}
# Settings read from the environment that change an artifact or its golden numbers.
ENVIRONMENT = ("OMNIC_THREADS", "OMNIC_LLAMA_EXTRA_BUFTS", "TVM_NDK_CC", "TVM_NUM_THREADS")
MEMO_FILE = "file-digests.json"


def host() -> dict[str, Any]:
    """The machine: artifacts (TVM's host library) and golden results (a runtime's kernels, what
    runs at all: Core ML's not_run off macOS) depend on it, so a cache shared between machines
    keeps their entries apart."""
    import platform

    return {"system": platform.system(), "machine": platform.machine(), "cpu": _cpu_model(),
            "env": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}}


# /proc/cpuinfo lines that name the CPU and its instruction set: x86's model and flags, Arm's
# implementer, part and features (an Arm Linux has no "model name").
_CPU_LINES = ("model name", "flags", "CPU implementer", "CPU part", "Features")


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    """A digest of what names this CPU and its instruction set: TVM's host library is compiled
    for this CPU (lowering.host_target), so a cache shared with another CPU must not hand it
    over."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = text.split("\n\n", 1)[0]  # the first processor's block
    lines = sorted(line.strip() for line in first.splitlines() if line.startswith(_CPU_LINES))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def front_key(spec: dict[str, Any], spec_dir: Path, targets: Iterable[str],
              extra_passes: Iterable[str], memo_dir: Path | None) -> str:
    return digest_of({
        "format": KEY_FORMAT, "kind": "front", "spec": _with_file_digests(spec, spec_dir,
                                                                         memo_dir),
        "targets": list(targets), "passes": list(extra_passes), "omnic": omnic_fingerprint(),
        "presets": quant_presets(), "toolchain": toolchain(), "host": host()})


def target_key(spec: dict[str, Any], spec_dir: Path, target: str, extra_passes: Iterable[str],
               memo_dir: Path | None, reads: tuple[list[str], list[str]] | None = None) -> str:
    """`reads`: the target's `cache_inputs(spec)` (targets whose options it reads,
    distributions it runs), when it has one."""
    options, wanted = reads or ([target], list(PER_TARGET.get(target, ())))
    data = _with_file_digests(spec, spec_dir, memo_dir)
    data["targets"] = {t: (data.get("targets") or {}).get(t) for t in options}
    versions = toolchain()
    wanted = (*COMMON, *wanted) if wanted or target in PER_TARGET else tuple(versions)
    return digest_of({
        "format": KEY_FORMAT, "kind": "target", "target": target, "spec": data,
        "passes": list(extra_passes), "omnic": omnic_fingerprint(), "host": host(),
        "toolchain": {k: v for k, v in versions.items() if k in wanted}})


def quant_presets() -> dict[str, str]:
    """sha256 of every quantization preset file (`quantization: auto` chooses among them; a
    spec that names one has it inlined in the resolved spec already)."""
    from omnic.presets.store import KINDS, search_dirs

    out = {}
    for root in reversed(search_dirs()):  # the first folder wins, as presets.store reads them
        for f in sorted((root / KINDS["quantization"]).glob("*.yaml")):
            out[f.stem] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def toolchain() -> dict[str, str]:
    from omnic.compiler.manifest import toolchain_versions

    return toolchain_versions()


def omnic_fingerprint() -> dict[str, str]:
    import omnic

    return {"version": omnic.__version__, "sources": _sources_digest()}


@lru_cache(maxsize=1)
def _sources_digest() -> str:
    """sha256 of every file of the installed omnic package (code and data, not bytecode)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if "__pycache__" in f.parts or f.suffix in (".pyc", ".pyo"):
            continue
        h.update(f"{f.relative_to(root).as_posix()}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _with_file_digests(spec: dict[str, Any], spec_dir: Path, memo_dir: Path | None
                       ) -> dict[str, Any]:
    """The spec with every file it names replaced by its content digest (file_digests), the
    digests remembered in the cache folder's MEMO_FILE between compiles (and shared with the
    GGUF writer's within this one)."""
    memo = _Memo(memo_dir)
    out = with_file_digests(spec, spec_dir)
    memo.save()
    return out


class _Memo:
    """file_digests' process memo, loaded from and saved to the cache folder."""

    def __init__(self, folder: Path | None):
        self.file = folder / MEMO_FILE if folder is not None else None
        if self.file is not None and self.file.is_file():
            try:
                PROCESS_MEMO.update(json.loads(self.file.read_text()))
            except (OSError, ValueError):
                pass
        self.size = len(PROCESS_MEMO)

    def save(self) -> None:
        if self.file is None or len(PROCESS_MEMO) == self.size:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".digests-")
            with os.fdopen(fd, "w") as f:
                json.dump(PROCESS_MEMO, f)
            os.replace(tmp, self.file)
        except OSError:
            pass  # a memo only: the next compile reads the files again
