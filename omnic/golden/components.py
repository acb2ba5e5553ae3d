"""Golden conformance of components (encoders, projectors, heads) on their real runtimes.

Each component is run by its torch module (the one the compiler built, never the program the
targets lowered, so a fault planted in lowering cannot leak into a reference) on two seeded
inputs of its static shape:
  0. its `example_input` (the builder's seeded input, also used for export);
  1. a second input drawn uniformly over the example's value range from a generator seeded by
     `golden.seed` and the component's name (numpy PCG64: the same bytes on every platform).
Both inputs and the torch outputs are saved to golden/components/<component>.npz, so `omnic
verify` re-runs the check later from the build alone, without torch.

An artifact is opened with `target.load(artifact, build_dir)`, which returns a ComponentRunner
(`run(x) -> y`) for a component, run on both inputs and judged against the row of
`tolerances.COMPONENT_TABLE` for its (target, precision): max-abs error against atol + rtol x
max|torch output|, and NMSE (worst input). Non-finite outputs and a wrong output shape fail.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from omnic.golden import metrics as M
from omnic.golden.check import GOLDEN_DIR, GoldenResult, load_runner
from omnic.golden.store import load_npz, save_npz
from omnic.golden.tolerances import (
    ComponentTolerance, ToleranceError, lookup_component,
)
from omnic.constants import GoldenStatus

if TYPE_CHECKING:
    from omnic.model.components import Component
    from omnic.targets.base import Artifact, ComponentRunner, Target

COMPONENTS_DIR = "components"  # golden/components/<component>.npz
INPUT_LABELS = ("example input", "seeded uniform input")


@dataclass
class ComponentReference:
    """The torch module's outputs on the golden inputs of one component."""

    name: str  # component id
    inputs: np.ndarray  # float32 [2, *input shape]
    outputs: np.ndarray  # float32 [2, *output shape]

    @property
    def path(self) -> str:
        """Build-relative path of the saved file."""
        return f"{GOLDEN_DIR}/{COMPONENTS_DIR}/{self.name}.npz"

    def save(self, build_dir: Path) -> None:
        save_npz(Path(build_dir) / self.path, {"inputs": self.inputs, "outputs": self.outputs})

    @classmethod
    def load(cls, build_dir: Path, path: str) -> "ComponentReference":
        a = load_npz(Path(build_dir) / path)
        return cls(Path(path).stem, a["inputs"], a["outputs"])


def golden_inputs(component: "Component", seed: int) -> np.ndarray:
    """The two golden inputs of a component, float32 [2, *shape] (see the module docstring)."""
    x = component.example_input.detach().float().numpy()
    rng = np.random.default_rng([seed, zlib.crc32(component.name.encode())])
    lo, hi = float(x.min()), float(x.max())
    second = rng.uniform(lo, hi if hi > lo else lo + 1.0, size=x.shape).astype(np.float32)
    return np.stack([x.astype(np.float32), second])


def reference(component: "Component", seed: int) -> ComponentReference:
    """Run the torch module on the golden inputs (one batch-1 call each)."""
    import torch

    inputs = golden_inputs(component, seed)
    with torch.no_grad():
        outs = [component.module(torch.from_numpy(x)).float().numpy() for x in inputs]
    return ComponentReference(component.name, inputs, np.stack(outs))


def compare(runner: "ComponentRunner", ref: ComponentReference, tol: ComponentTolerance
            ) -> tuple[str, str | None, dict[str, float]]:
    """Run `runner` on the golden inputs and judge it against `ref` with `tol`.

    Returns:
        (status, reason, metrics {max_abs, nmse}); reason names each broken limit and where.
    """
    scale = float(np.abs(ref.outputs).max())
    abs_limit = tol.atol + tol.rtol * scale
    violations: list[str] = []
    abs_worst, nmse_worst = (-1.0, ""), (-1.0, "")
    for i, (x, want) in enumerate(zip(ref.inputs, ref.outputs)):
        label = INPUT_LABELS[i] if i < len(INPUT_LABELS) else f"input {i}"
        got = np.asarray(runner.run(x))
        if got.shape != want.shape:
            violations.append(f"{label}: output shape {list(got.shape)}, expected "
                              f"{list(want.shape)}")
            continue
        if not np.isfinite(got).all():  # NaN compares false with every limit: fail explicitly
            violations.append(f"{label}: non-finite outputs (NaN or inf)")
            got = np.nan_to_num(got, nan=0.0, posinf=1e30, neginf=-1e30)
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        at = np.unravel_index(int(diff.argmax()), diff.shape)
        if diff[at] > abs_worst[0]:
            abs_worst = (float(diff[at]), f"{label} index {list(map(int, at))}")
        err = M.nmse(got, want)
        if err > nmse_worst[0]:
            nmse_worst = (err, label)
    values = {M.MAX_ABS: abs_worst[0], M.NMSE: nmse_worst[0]}
    if abs_worst[0] > abs_limit:
        violations.append(f"max_abs {abs_worst[0]:.4g} (at {abs_worst[1]}) breaks <= "
                          f"{abs_limit:.3g} (atol {tol.atol:g} + rtol {tol.rtol:g} x max|torch| "
                          f"{scale:.3g})")
    if nmse_worst[0] > tol.nmse:
        violations.append(f"nmse {nmse_worst[0]:.4g} (at {nmse_worst[1]}) breaks <= {tol.nmse:g}")
    if violations:
        return GoldenStatus.FAILED, "; ".join(violations), values
    return GoldenStatus.PASSED, None, values


def judge(target: "Target", artifact: "Artifact", build_dir: Path, ref: ComponentReference,
          overrides: Mapping[str, float] | None = None) -> GoldenResult:
    """Load the artifact on its runtime and compare; never raises for a bad artifact."""
    try:
        tol = lookup_component(artifact.target, artifact.precision, overrides)
    except ToleranceError as err:
        return GoldenResult(GoldenStatus.FAILED, str(err))
    runner, early = load_runner(target, artifact, build_dir)
    if early is not None:
        early.reference, early.limits = ref.path, tol.limits()
        return early
    try:
        status, reason, values = compare(runner, ref, tol)
    except Exception as err:  # noqa: BLE001 - a crashing runtime is a failed artifact
        return GoldenResult(GoldenStatus.FAILED, f"runtime error: {type(err).__name__}: {err}",
                            reference=ref.path, limits=tol.limits())
    finally:
        del runner
    return GoldenResult(status, reason, values, ref.path, tol.limits())


class ComponentGoldenSession:
    """Compile-time golden checks of components: owns their references.

    Args:
        components: the components the compiler built (never the lowered/faulted program's).
        build_dir: the build being written; references go to build_dir/golden/components/.
        seed: `golden.seed` of the spec (the second input's generator).
        overrides: the spec's golden.tolerances.
    """

    def __init__(self, components: Mapping[str, "Component"], build_dir: Path, seed: int,
                 overrides: Mapping[str, float] | None = None) -> None:
        self.build_dir = Path(build_dir)
        self.overrides = dict(overrides or {})
        self.references = {name: reference(c, seed) for name, c in components.items()}
        for ref in self.references.values():
            ref.save(self.build_dir)

    def check(self, target: "Target", artifact: "Artifact") -> GoldenResult:
        """Judge one component artifact against its reference. Never raises for a bad one."""
        ref = self.references.get(artifact.component)
        if ref is None:
            return GoldenResult(GoldenStatus.FAILED, f"no golden reference for component "
                                f"{artifact.component!r} (not built by this compile)")
        return judge(target, artifact, self.build_dir, ref, self.overrides)


def verify_component(target: "Target", artifact: "Artifact", build_dir: Path, reference_path: str,
                     overrides: Mapping[str, float] | None = None) -> GoldenResult:
    """Re-run a component's golden check from the build's saved golden file (no torch)."""
    ref = ComponentReference.load(build_dir, reference_path)
    return judge(target, artifact, build_dir, ref, overrides)

