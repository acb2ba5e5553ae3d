"""ONNX lowering of one component (encoder, projector, action head): `<component>.onnx`.

The file sits in the target's folder next to the decoder (BUILD/onnx/vision_encoder.onnx), the
layout onnxruntime-genai's multimodal packages use (one folder, one model file per part).
  ref: https://onnxruntime.ai/docs/genai/reference/config.html (model.vision.filename)
The decoder's artifact is that whole folder (the deployable package), so its bytes and sha256
cover the component files as well; each component's artifact covers its own file only.

Export: torch.onnx (dynamo) at the spec's opset with the contract's static batch-1 shapes and its
I/O names, the same clean-up and `finalize` as the decoder (constant folding that leaves weights
alone; deterministic names, producer "omnic"), weights kept float32. onnxruntime applies its own
graph optimizations at session creation; omnic's decoder fusions (GQA, rotary) do not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omnic.constants import Targets
from omnic.targets.components import build_relative, checked_input, io_of, make_artifact

if TYPE_CHECKING:
    from omnic.model.components import Component
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import Artifact

DEFAULT_OPSET = 21


def lower_component(component: "Component", out_dir: Path,
                    spec: "ResolvedSpec | None" = None) -> "Artifact":
    """Write `out_dir/<component>.onnx`; return its Artifact (path relative to the build)."""
    import omnic
    from omnic.targets.onnx import export as onnx_export
    from omnic.targets.onnx import fusions as onnx_fusions

    opts = spec.targets.onnx if spec is not None else None
    opset = opts.opset if opts is not None else DEFAULT_OPSET
    model = onnx_export.export_quietly(
        component.module, (component.example_input,), f"the {component.name}", opset,
        input_names=[component.input_name], output_names=[component.output_name])
    onnx_fusions.cleanup(model)
    onnx_export.finalize(model, opset, omnic.__version__)
    model.graph.name = f"omnic_{component.name}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{component.name}.onnx"
    files = onnx_export.save(model, path)
    return make_artifact(
        component, Targets.ONNX, build_relative(out_dir, path.name),
        op_histogram=onnx_export.op_histogram(model),
        details={"model_file": path.name, "opset": opset,
                 "files": sorted(p.name for p in files)},
    )


def load_component(artifact: "Artifact", build_dir: Path) -> "OnnxComponentRunner":
    """An onnxruntime session over the component's model file."""
    from omnic.targets.onnx.backend import require_backend

    require_backend()
    path = Path(build_dir) / artifact.path
    if not path.is_file():
        raise FileNotFoundError(f"onnx: {path} does not exist")
    return OnnxComponentRunner(path, *io_of(artifact))


class OnnxComponentRunner:
    """`omnic.targets.base.ComponentRunner` over onnxruntime (CPU)."""

    def __init__(self, path: Path, input_name: str, input_shape: list[int],
                 output_name: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name, self.input_shape, self.output_name = input_name, input_shape, output_name

    def run(self, x: np.ndarray) -> np.ndarray:
        feed = {self.input_name: checked_input(x, self.input_shape, "onnx")}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)
