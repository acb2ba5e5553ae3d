"""The target interface, the target registry, and the runner every runtime is driven through.

A target is a package under `omnic/targets/` (or a third-party module named by the entry-point
group `omnic.targets`) that defines one class decorated with `@register_target("id")`:

    check(spec) -> list[Problem]
        pre-flight, before any work; torch-free. Everything that would stop lowering is a
        Problem: an op, scheme or component the backend cannot take, and a backend library
        missing on this host ("install omnic[x]").
    lower(program, out_dir) -> list[Artifact]
        the decoder's artifact(s): writes files under out_dir, never mutates the program. The
        pipeline has run `check` on program.spec before; lower does not repeat it.
    lower_component(program, name, out_dir) -> Artifact
        one component of program.components (an encoder, projector or head), beside the
        decoder's files. The pipeline (omnic.compiler.lowering) calls it for each component, in
        `omnic.targets.components.components_of` order, after `lower`. A target that carries no
        component refuses specs with one in `check` and may leave this method out.
    load(artifact, build_dir) -> Runner | ComponentRunner
        a Runner for the decoder, a ComponentRunner for a component; raises NotRunnable(reason)
        when this host cannot run it (a backend library missing, another OS, no delegate).

and, optionally:

    load_embeds(artifact, build_dir) -> omnic.runtime.multimodal.EmbedsRunner
        the decoder artifact driven by input embeddings (`omnic run --image/--audio`), for
        targets whose build carries such a graph; raises NotRunnable like `load`. Call it
        through `load_embeds(target, ...)` below, which answers NotRunnable("cannot take
        embeddings") for targets without it.

Backend libraries are imported inside these methods, never at module import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from omnic.runtime.runner import ComponentRunner, Runner  # noqa: F401  (part of the interface)

if TYPE_CHECKING:
    from pathlib import Path


    from omnic.passes.program import Program
    from omnic.runtime.multimodal import EmbedsRunner
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
    # Per weight (canonical name), how the runtime's kernel rounds that matmul's input to int8
    # (omnic.quant.activations.ActivationQuant); the exact reference rounds it the same way.
    # None: the runtime multiplies float activations.
    activation_quant: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # The target's own passes that made this artifact (omnic.passes.run_passes records, in
    # order); the pipeline writes them into the manifest beside the model-level passes.
    passes: list[Any] = field(default_factory=list, repr=False, compare=False)


class NotRunnable(Exception):
    """This host cannot execute the artifact (for example Core ML off macOS)."""


def runnable_unless(reason: str | None) -> None:
    """Raise NotRunnable(reason) when a backend's `missing()` gave a reason."""
    if reason is not None:
        raise NotRunnable(reason)


def absent_modules(modules: list[str]) -> list[str]:
    """Those of `modules` this host cannot import, found without importing them: backend
    libraries import torch, and pre-flight (`check`) stays torch-free."""
    def absent(module: str) -> bool:
        if module in sys.modules:  # imported already, or blocked (None)
            return sys.modules[module] is None
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a parent package missing, or no __spec__
            return True

    return [m for m in modules if absent(m)]


class Target(Protocol):
    """The interface of every target (see the module docstring for each method's contract)."""

    id: str

    def check(self, spec: "ResolvedSpec") -> list[Problem]: ...

    def lower(self, program: "Program", out_dir: "Path") -> list[Artifact]: ...

    def lower_component(self, program: "Program", name: str, out_dir: "Path") -> Artifact: ...

    def load(self, artifact: Artifact, build_dir: "Path") -> "Runner | ComponentRunner": ...


def takes_embeddings(target: Any) -> bool:
    """Whether `target` can run its decoder on input embeddings (has `load_embeds`)."""
    return callable(getattr(target, "load_embeds", None))


def load_embeds(target: Any, artifact: Artifact, build_dir: "Path") -> "EmbedsRunner":
    """`target.load_embeds(artifact, build_dir)`.

    Raises:
        NotRunnable: the target cannot take embeddings, or this host cannot run the artifact.
    """
    if not takes_embeddings(target):
        raise NotRunnable(f"{target.id}: cannot take embeddings (its build has no decoder on "
                          "input embeddings)")
    return target.load_embeds(artifact, build_dir)


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
