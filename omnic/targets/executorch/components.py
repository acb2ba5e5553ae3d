"""ExecuTorch lowering of one component: `BUILD/executorch/<component>.pte`.

The same path as the decoder's (target.py) without the KV cache and the LLM metadata: one
`forward(x) -> y` method at the contract's static batch-1 shapes, torch.export →
`to_edge_transform_and_lower` with the spec's backend partitioner (XNNPACK by default) →
`to_executorch`. Weights stay float32 (the decoder's quant plan names decoder tensors only);
with the Core ML delegate at fp16 compute precision the delegated part computes in fp16.
  ref: https://pytorch.org/executorch/stable/tutorial-xnnpack-delegate-lowering.html
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omnic.constants import Targets
from omnic.targets.components import (
    build_relative, checked_input, export, io_of, make_artifact,
)
from omnic.targets.executorch.backend import (
    coreml_options, delegate_of, delegation_summary, partitioners, require_runtime, runtime_fixes,
    runtime_ops,
)

if TYPE_CHECKING:
    from omnic.model.components import Component
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import Artifact

FORWARD = "forward"


def lower_component(component: "Component", out_dir: Path,
                    spec: "ResolvedSpec | None" = None) -> "Artifact":
    """Write `out_dir/<component>.pte`; return its Artifact (path relative to the build)."""
    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass
    from executorch.exir import (
        EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower,
    )

    backend = delegate_of(spec) if spec is not None else "xnnpack"
    import torch

    with torch.no_grad():  # ops the runtime computes otherwise than aten, as formulas
        ep = export(component).run_decompositions(runtime_fixes())
    edge = to_edge_transform_and_lower(
        ep, partitioner=partitioners(spec),
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True))
    summary = delegation_summary(edge.exported_program().graph_module)
    edge = edge.transform([ConvertToLinearPass()])  # linears outside a delegate: one op
    program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pte = out_dir / f"{component.name}.pte"
    pte.write_bytes(program.buffer)

    precision = "fp32"
    details = {
        "backend": backend,
        "delegated_ops": summary["delegated_ops"],
        "non_delegated_ops": summary["non_delegated_ops"],
        "delegate_partitions": summary["partitions"],
        "delegates": summary["backends"],
        "not_delegated": summary["not_delegated"],
        "runtime_ops": runtime_ops(program),
        "methods": [FORWARD],
    }
    if backend == "coreml":
        details["coreml"] = coreml_options(spec)
        details["deterministic"] = False  # the Core ML delegate's model id is a uuid4
        precision = details["coreml"]["compute_precision"]
    histogram = Counter(summary["delegated"]) + Counter(summary["not_delegated"])
    return make_artifact(component, Targets.EXECUTORCH, build_relative(out_dir, pte.name),
                         op_histogram=dict(histogram), details=details, precision=precision)


def load_component(artifact: "Artifact", build_dir: Path) -> "ExecutorchComponentRunner":
    """The .pte's `forward` on ExecuTorch's Python runtime (NotRunnable without its delegate)."""
    require_runtime(artifact.details.get("backend", "xnnpack"))
    return ExecutorchComponentRunner(Path(build_dir) / artifact.path, *io_of(artifact))


class ExecutorchComponentRunner:
    """`omnic.targets.base.ComponentRunner` over a one-method .pte."""

    def __init__(self, path: Path, input_name: str, input_shape: list[int],
                 output_name: str) -> None:
        import torch  # noqa: F401  (loads libtorch for the bindings)
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(Path(path).read_bytes())
        self.method = self.program.load_method(FORWARD)
        if self.method is None:
            raise RuntimeError(f"{Path(path).name}: method {FORWARD!r} does not load")
        self.input_shape = input_shape

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        arr = checked_input(x, self.input_shape, "executorch")
        (out,) = self.method.execute([torch.from_numpy(arr)])
        return out.to(torch.float32).numpy().copy()
