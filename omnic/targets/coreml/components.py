"""Core ML lowering of one component: `BUILD/coreml/<component>.mlpackage` (stateless ML Program).

    component ─► torch.export (static batch-1 shape) ─► ct.convert (ML Program, the spec's
              deployment target, compute units and compute precision) ─► save, normalise

No state and no compression: components keep float weights, which an ML Program stores in its
compute precision (fp16 at compute_precision fp16, as on device; the artifact's precision says
so and the golden check uses the fp16 tolerance row). I/O stay float32 at the interface.
  ref: https://apple.github.io/coremltools/docs-guides/source/typed-execution.html

Core ML runs only on macOS. Elsewhere `load_component` re-opens the package and checks its
structure against what `lower_component` recorded (`structural_check`); a broken package fails
the golden check, a sound one is "not run: needs macOS".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.constants import Targets
from omnic.targets.base import NotRunnable
from omnic.targets.coreml.backend import NEEDS_MACOS, is_macos, require_coremltools
from omnic.targets.components import (
    build_relative, checked_input, export, io_of, make_artifact,
)

if TYPE_CHECKING:
    from omnic.model.components import Component
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import Artifact

OPTIONS = ("deployment_target", "compute_units", "compute_precision")
META_COMPONENT = "com.omnic.component"


def _options(spec: "ResolvedSpec | None") -> dict[str, str]:
    """The spec's targets.coreml settings (the schema's defaults without a spec, in unit use)."""
    from omnic.spec.targets import CoremlTarget

    c = (spec.targets.coreml if spec is not None else None) or CoremlTarget()
    return {k: getattr(c, k) for k in OPTIONS}


def lower_component(component: "Component", out_dir: Path,
                    spec: "ResolvedSpec | None" = None) -> "Artifact":
    """Write `out_dir/<component>.mlpackage`; return its Artifact (path relative to the build)."""
    import coremltools as ct

    from omnic.targets.coreml import convert as cv
    from omnic.targets.coreml import structure as ins

    opts = _options(spec)
    with_decomps = export(component).run_decompositions({})  # coremltools converts ATen
    cv.register_missing_ops()
    mlmodel = ct.convert(
        with_decomps, convert_to="mlprogram",
        outputs=[ct.TensorType(name=component.output_name, dtype=np.float32)],
        minimum_deployment_target=cv.deployment_target(opts["deployment_target"]),
        compute_units=cv.compute_units(opts["compute_units"]),
        compute_precision=cv.compute_precision(opts["compute_precision"]),
        skip_model_load=True,  # Core ML cannot load off macOS; saving needs no load
    )
    # The input is named after the module's forward argument; the contract's name is the
    # interface (coremltools renames it inside the ML Program as well).
    pb = mlmodel.get_spec()
    (current,) = [i.name for i in pb.description.input]
    if current != component.input_name:
        ct.utils.rename_feature(pb, current, component.input_name)
    meta = pb.description.metadata.userDefined
    meta.pop(ins.DATE_KEY, None)  # the only time-dependent byte of the package
    meta[ins.META_UNITS] = opts["compute_units"]
    meta[ins.META_PRECISION] = opts["compute_precision"]
    meta[META_COMPONENT] = component.name
    mlmodel = ct.models.MLModel(pb, weights_dir=mlmodel.weights_dir, skip_model_load=True)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    package = out_dir / f"{component.name}.mlpackage"
    if package.exists():
        shutil.rmtree(package)
    mlmodel.save(str(package))
    ins.normalise_package(package)
    saved = ct.utils.load_spec(str(package))
    precision = opts["compute_precision"]
    return make_artifact(
        component, Targets.COREML, build_relative(out_dir, package.name),
        op_histogram=ins.op_histogram(saved),
        details={
            **opts,
            "specification_version": saved.specificationVersion,
            "bytes": ins.package_bytes(package),
            "frontend": "torch.export",
            "coremltools": ct.__version__,
            "numeric_check": f"runs on macOS only ({NEEDS_MACOS}); structure checked here",
        },
        precision=precision,
    )


def structural_check(artifact: "Artifact", build_dir: Path) -> list[str]:
    """Re-open a component package and list what disagrees with what `lower_component`
    recorded (I/O names, dtypes and shapes, op histogram, specification version, compute
    precision and units); [] when it conforms."""
    from omnic.targets.coreml import structure as ins

    pb, program, failures = ins.open_package(Path(build_dir), artifact.path)
    if pb is None:
        return failures
    d = artifact.details
    if pb.WhichOneof("Type") != "mlProgram":
        failures.append(f"model type is {pb.WhichOneof('Type')}, not mlProgram")
    want = ins.SPEC_VERSION.get(d.get("deployment_target", ""))
    if want is not None and pb.specificationVersion != want:
        failures.append(f"specificationVersion {pb.specificationVersion}, expected {want} for "
                        f"{d['deployment_target']}")
    got = ins.read_signature(pb, program)
    for part in ("inputs", "outputs"):
        if got[part] != artifact.signature[part]:
            failures.append(f"{part}: {got[part]}, lower() recorded {artifact.signature[part]}")
    if got["states"]:
        failures.append(f"states {sorted(got['states'])}: a component has none")
    histogram = ins.op_histogram(pb)
    if histogram != artifact.op_histogram:
        failures.append(f"op histogram {histogram}, lower() recorded {artifact.op_histogram}")
    n_fp32 = ins.fp32_compute_ops(program)
    if d.get("compute_precision") == "fp16" and n_fp32:
        failures.append(f"{n_fp32} linear/matmul ops compute in fp32, the spec says fp16")
    meta = dict(pb.description.metadata.userDefined)
    for key, value in ((ins.META_UNITS, d.get("compute_units")),
                       (ins.META_PRECISION, d.get("compute_precision")),
                       (META_COMPONENT, artifact.component)):
        if meta.get(key) != value:
            failures.append(f"metadata {key}={meta.get(key)!r}, expected {value!r}")
    return failures


def load_component(artifact: "Artifact", build_dir: Path) -> "CoremlComponentRunner":
    """A runner on macOS; elsewhere the structural check, then NotRunnable("needs macOS").
    NotRunnable without coremltools (which the structural check reads the package with)."""
    require_coremltools()
    if not is_macos():
        failures = structural_check(artifact, build_dir)
        if failures:
            raise RuntimeError("structural check failed: " + "; ".join(failures))
        raise NotRunnable(f"{NEEDS_MACOS} (structure checked: I/O, ops, precision, metadata)")
    return CoremlComponentRunner(Path(build_dir) / artifact.path,
                                 artifact.details.get("compute_units", "all"), *io_of(artifact))


class CoremlComponentRunner:
    """`omnic.targets.base.ComponentRunner` over Core ML (macOS)."""

    def __init__(self, package: Path, units: str, input_name: str, input_shape: list[int],
                 output_name: str) -> None:
        import coremltools as ct

        from omnic.targets.coreml.convert import compute_units

        self.model = ct.models.MLModel(str(package), compute_units=compute_units(units))
        self.input_name, self.input_shape, self.output_name = input_name, input_shape, output_name

    def run(self, x: np.ndarray) -> np.ndarray:
        out: Any = self.model.predict(
            {self.input_name: checked_input(x, self.input_shape, "coreml")})
        return np.asarray(out[self.output_name], dtype=np.float32)
