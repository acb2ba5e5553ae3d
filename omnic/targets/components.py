"""What the backends' component lowerings (`omnic/targets/<backend>/components.py`) share.

A component (omnic/model/components.py) is one module with one float32 tensor in and
one out, batch 1, static shapes. Every target lowers it the same way around its own backend call
(`Target.lower_component(program, name, out_dir)`, called by the pipeline for each component in
`components_of` order):

    torch.export (static shapes) ─► backend ─► files under BUILD/<target>/ ─► Artifact

and `Target.load` hands back a `ComponentRunner` (`run(x) -> y`) instead of a decoder Runner.
This module holds the common parts: the order of `program.components`, the export, the I/O
signature, the Artifact, and the input check every runner applies before calling its runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.constants import Components

if TYPE_CHECKING:
    import torch

    from omnic.model.components import Component
    from omnic.passes.program import Program
    from omnic.targets.base import Artifact

FLOAT32 = "float32"


def is_component(artifact: "Artifact") -> bool:
    """Whether `artifact` is an encoder / projector / head rather than the decoder."""
    return artifact.component != Components.DECODER


def components_of(program: "Program") -> list["Component"]:
    """The program's components in the contract's order (vision, audio, sensors, action)."""
    comps = program.components or {}
    order = [c for c in Components.ALL if c in comps] + sorted(set(comps) - set(Components.ALL))
    return [comps[name] for name in order]


def reference_output(component: "Component") -> "torch.Tensor":
    """The torch module's output on its example input (shape and dtype of the signature)."""
    import torch

    with torch.no_grad():
        return component.module(component.example_input)


def export(component: "Component") -> "torch.export.ExportedProgram":
    """torch.export of the component at its example input's static shape (no dynamic dims:
    every backend gets the fixed batch-1 shape of the contract)."""
    import torch

    with torch.no_grad():
        return torch.export.export(component.module, (component.example_input,), strict=False)


def signature(component: "Component") -> dict[str, Any]:
    """{"inputs": {name: {dtype, shape}}, "outputs": {...}} of the contract's one-in-one-out."""
    out = reference_output(component)
    return {
        "inputs": {component.input_name: {"dtype": FLOAT32,
                                          "shape": list(component.example_input.shape)}},
        "outputs": {component.output_name: {"dtype": FLOAT32, "shape": list(out.shape)}},
    }


def weights_summary(component: "Component", stored: str) -> dict[str, Any]:
    """The artifact's quantization record: components are stored unquantized (`stored` is the
    float type the artifact holds them in: fp32, or fp16 where Core ML computes in fp16)."""
    params = list(component.module.parameters())
    return {"weights": stored, "tensors": len(params),
            "parameters": int(sum(p.numel() for p in params))}


def make_artifact(component: "Component", target_id: str, path: str, *,
                  op_histogram: dict[str, int], details: dict[str, Any],
                  precision: str = "fp32") -> "Artifact":
    """The Artifact of one lowered component (`path` relative to the build directory)."""
    from omnic.targets.base import Artifact

    return Artifact(
        component=component.name, target=target_id, path=path,
        signature=signature(component), op_histogram=dict(sorted(op_histogram.items())),
        quantization=weights_summary(component, precision), details=details,
        precision=precision,
    )


def build_relative(out_dir: Path, name: str) -> str:
    """`name` under out_dir as a path relative to the build (out_dir is BUILD/<target id>)."""
    return f"{Path(out_dir).name}/{name}"


def io_of(artifact: "Artifact") -> tuple[str, list[int], str]:
    """(input name, input shape, output name) recorded in the artifact's signature."""
    (in_name, spec_in), = artifact.signature["inputs"].items()
    (out_name, _), = artifact.signature["outputs"].items()
    return in_name, [int(d) for d in spec_in["shape"]], out_name


def checked_input(x: np.ndarray, shape: list[int], where: str) -> np.ndarray:
    """`x` as contiguous float32 of exactly `shape` (components have static shapes)."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if list(arr.shape) != list(shape):
        raise ValueError(f"{where}: input of shape {list(arr.shape)}, the artifact takes {shape}")
    return arr
