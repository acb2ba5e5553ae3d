"""TVM lowering of one component: a directory `BUILD/tvm/<component>-tvm/` run by the Relax VM.

    component ─► torch.export (static batch-1 shape) ─► from_exported_program (weights kept as
              inputs) ─► tvm.compile with the decoder's CPU pipeline (lowering.build) for
              spec.targets.tvm (target, opt_level) and, when a triple is set, cross-compiled

The directory mirrors the decoder's layout:
    <component>.so                   host library (Relax VM executable + kernels)
    <component>.params.safetensors   float32 weights, in `main`'s argument order
    <component>.json                 I/O, weight order, target (format FORMAT)
    <component>.<triple>.tar         objects for the device (when a triple is set)
`main(x, *weights) -> y`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.constants import Targets
from omnic.targets.components import (
    build_relative, checked_input, export, io_of, make_artifact,
)
from omnic.targets.tvm.backend import cross_triple, open_vm, require_tvm

if TYPE_CHECKING:
    from omnic.model.components import Component
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import Artifact

FORMAT = "omnic-tvm-component/1"  # the layout of <component>.json; bump on any change


def lower_component(component: "Component", out_dir: Path,
                    spec: "ResolvedSpec | None" = None) -> "Artifact":
    """Write `out_dir/<component>-tvm/`; return its Artifact (path relative to the build)."""
    import tvm
    from safetensors.numpy import save_file

    from omnic.targets.tvm import lowering as L

    cfg = spec.targets.tvm if spec is not None else None
    target_str = cfg.target if cfg is not None else "llvm"
    opt_level = cfg.opt_level if cfg is not None else 3
    ep = export(component)
    mod, targets, num_input = L.to_relax(ep)
    state = {k: v.detach().float().numpy() for k, v in component.module.state_dict().items()}
    weights = {name: np.ascontiguousarray(state[name]) for name in targets}
    for (name, arr), (shape, dtype) in zip(weights.items(), L.param_signature(mod, num_input)):
        if list(arr.shape) != shape or str(arr.dtype) != dtype:
            raise RuntimeError(f"tvm: {component.name} weight {name} is {arr.dtype}"
                               f"{list(arr.shape)}, main expects {dtype}{shape}")

    name = component.name
    root = Path(out_dir) / f"{name}-tvm"
    root.mkdir(parents=True, exist_ok=True)
    host = L.host_target(target_str)
    kernels: dict[str, int] = {}
    L.export_host(L.build(mod, host, opt_level, kernels), root / f"{name}.so")
    params = root / f"{name}.params.safetensors"
    save_file(weights, str(params), metadata={"format": FORMAT})
    params.chmod(0o644)  # safetensors writes through a private (0600) temp file

    triple, triple_from = cross_triple(spec) if spec is not None else (None, None)
    cross = None
    if triple:
        tar = root / f"{name}.{triple}.tar"
        members = L.export_cross(L.build(mod, L.cross_target(triple), opt_level), tar)
        cross = {"triple": triple, "from": triple_from, "archive": tar.name, "members": members}

    descriptor = {
        "format": FORMAT, "function": "main", "library": f"{name}.so", "params": params.name,
        "input": component.input_name, "output": component.output_name,
        "weights": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                    for n, a in weights.items()],
        "target": str(host), "cross": cross,
    }
    (root / f"{name}.json").write_text(json.dumps(descriptor, indent=1, sort_keys=True) + "\n")
    files = sorted(p for p in root.iterdir() if p.is_file())
    return make_artifact(
        component, Targets.TVM, build_relative(out_dir, root.name),
        op_histogram=L.op_histogram(mod),
        details={
            "descriptor": f"{name}.json", "target": str(host), "opt_level": opt_level,
            "kernels": kernels, "target_triple": triple, "cross": cross,
            "tvm_version": tvm.__version__,
            "files": {p.name: p.stat().st_size for p in files},
            "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        },
    )


def load_component(artifact: "Artifact", build_dir: Path) -> "TvmComponentRunner":
    """The component's library on the host's Relax VM (NotRunnable without apache-tvm)."""
    require_tvm()
    root = Path(build_dir) / artifact.path
    return TvmComponentRunner(root / artifact.details["descriptor"], io_of(artifact)[1])


class TvmComponentRunner:
    """`omnic.targets.base.ComponentRunner` over the Relax VM (weights loaded once)."""

    def __init__(self, descriptor: Path, input_shape: list[int]) -> None:
        meta: dict[str, Any] = json.loads(descriptor.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"tvm: {descriptor} has format {meta.get('format')!r}, this omnic "
                             f"reads {FORMAT!r}")
        self.device, self.main, self.weights = open_vm(descriptor.parent, meta)
        self.input_shape = input_shape

    def run(self, x: np.ndarray) -> np.ndarray:
        import tvm

        arr = checked_input(x, self.input_shape, "tvm")
        out = self.main(tvm.runtime.tensor(arr, self.device), *self.weights)
        if not hasattr(out, "numpy"):  # a one-element tuple (the exporter's output list)
            (out,) = out
        return np.asarray(out.numpy(), dtype=np.float32)
