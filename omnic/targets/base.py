"""The target interface, the target registry, and the runner every runtime is driven through.

A target is a module under `omnic/targets/` (or a third-party module named by the entry-point
group `omnic.targets`) that defines one class decorated with `@register_target("id")`:

    check(spec) -> list[Problem]          pre-flight, before any work; torch-free
    lower(program, out_dir) -> list[Artifact]   writes files under out_dir; never mutates program
    load(artifact, build_dir) -> Runner   raises NotRunnable(reason) when this host cannot run it
                                          (a ComponentRunner for a non-decoder component)

Backend libraries are imported inside these methods, never at module import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from omnic.runtime.runner import ComponentRunner, Runner  # noqa: F401  (part of the interface)

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec


@dataclass(frozen=True)
class Problem:
    """A reason a target cannot take a spec, found before lowering."""

    target: str
    field: str  # spec field path, e.g. "quantization.weights.group_size"
    message: str

    def __str__(self) -> str:
        return f"{self.target}: {self.field}: {self.message}"


@dataclass
class Artifact:
    """One file (or directory) a target wrote for one component."""

    component: str
    target: str
    path: str  # relative to the build directory
    signature: dict[str, Any] = field(default_factory=dict)  # {"inputs": {...}, "outputs": {...}}
    op_histogram: dict[str, int] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific, deterministic facts
    precision: str = "fp32"  # row key of the tolerance table: fp32, fp16, q8_0, q4_0, int4_g32, ...
    # The weights exactly as the artifact stores them, dequantized to float32 numpy arrays, keyed
    # by canonical tensor name; None when the artifact stores the fp32 weights unchanged. The
    # golden check builds its quantization-exact reference from these. Never written to disk.
    reference_weights: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # The target's own passes that made this artifact (omnic.passes.run_passes records, in
    # order); the pipeline writes them into the manifest beside the model-level passes.
    passes: list[Any] = field(default_factory=list, repr=False, compare=False)


class NotRunnable(Exception):
    """This host cannot execute the artifact (for example Core ML off macOS)."""


class Target(Protocol):
    id: str

    def check(self, spec: "ResolvedSpec") -> list[Problem]: ...

    def lower(self, program: "Program", out_dir: "Path") -> list[Artifact]: ...

    def load(self, artifact: Artifact, build_dir: "Path") -> "Runner | ComponentRunner": ...


_REGISTRY: dict[str, type] = {}

# Built-in targets, imported only when asked for (they import their backend lazily as well).
_BUILTIN_MODULES = {
    "onnx": "omnic.targets.onnx",
    "gguf": "omnic.targets.gguf",
    "executorch": "omnic.targets.executorch",
    "coreml": "omnic.targets.coreml",
    "tvm": "omnic.targets.tvm",
}
ENTRY_POINT_GROUP = "omnic.targets"


def register_target(target_id: str) -> Callable[[type], type]:
    """Class decorator: make a target available under `target_id`."""

    def deco(cls: type) -> type:
        cls.id = target_id
        _REGISTRY[target_id] = cls
        return cls

    return deco


def get_target(target_id: str) -> Target:
    """An instance of the target registered as `target_id` (built-in or entry point)."""
    if target_id not in _REGISTRY:
        if target_id in _BUILTIN_MODULES:
            importlib.import_module(_BUILTIN_MODULES[target_id])
        else:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name == target_id:
                    ep.load()
    if target_id not in _REGISTRY:
        raise KeyError(f"unknown target {target_id!r}; known: {sorted(_BUILTIN_MODULES)}")
    return _REGISTRY[target_id]()
