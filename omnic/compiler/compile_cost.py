"""What a compile costs the machine, estimated from the memory plan before any work.

A compile's resident memory is the process itself (torch and the runtimes imported) plus a
multiple of the model's fp32 weight bytes that depends on the stage: the build and the golden
reference hold the fp32 model and its reference runs; each target's lowering and golden check
hold the model, the target's own copy of the weights and the runtime's session.

    stage_peak_bytes(plan, stage)     one stage ("front", or a target id), bytes
    compile_peak_bytes(plan, targets) a whole compile run target after target, bytes

Used to bound what runs at once: `omnic compile --jobs N` and `omnic farm` (declared to Ray).
The factors are upper bounds read off manifests' per-stage peak RSS (`timings`).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

GIB = 1 << 30
# The process with torch, onnxruntime, llama.cpp, executorch, coremltools and tvm imported.
BASE_BYTES = int(1.5 * GIB)
# Peak resident bytes above BASE_BYTES, as multiples of the fp32 weight bytes.
FACTORS = {"front": 3.0, "onnx": 3.0, "gguf": 2.5, "executorch": 4.0, "coreml": 4.0, "tvm": 3.0}
DEFAULT_FACTOR = 4.0
# Relative wall time of each target's lower + golden stages (the manifests' `timings` of
# specs/mobile_2gb.yaml and the real SmolLM2): --jobs starts the longest first.
DURATION = {"executorch": 4.0, "coreml": 2.0, "tvm": 2.0, "onnx": 2.0, "gguf": 1.0}


def fp32_bytes(plan: Any) -> int:
    """The model's weights at fp32 (4 bytes per parameter)."""
    return 4 * int(plan.parameters)


def stage_peak_bytes(plan: Any, stage: str) -> int:
    """The peak resident bytes of one stage of a compile of `plan`'s model."""
    return BASE_BYTES + int(FACTORS.get(stage, DEFAULT_FACTOR) * fp32_bytes(plan))


def longest_first(targets: Iterable[str]) -> list[str]:
    """`targets` in the order that finishes a parallel compile soonest (longest first)."""
    return sorted(targets, key=lambda t: -DURATION.get(t, max(DURATION.values())))


def compile_peak_bytes(plan: Any, targets: Iterable[str]) -> int:
    """A whole compile, one stage after another: the largest stage's peak."""
    return max(stage_peak_bytes(plan, s) for s in ("front", *targets))


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """'500M', '10G', '1.5GiB', '0' -> bytes; ValueError (naming `what`) otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"{what} {text!r}: expected a size such as 500M, 10G or 0")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
