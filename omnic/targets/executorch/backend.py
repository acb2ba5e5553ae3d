"""What the ExecuTorch target and its components share: is the toolchain here, which delegate a
spec asks for, the partitioner that delegate brings, and what a lowered program delegated.

Backend libraries (executorch, coremltools) are imported inside the functions that need them.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from omnic.targets.base import NotRunnable, absent_modules, runnable_unless

if TYPE_CHECKING:
    import torch

    from omnic.spec import ResolvedSpec

INSTALL_HINT = "install omnic[executorch] (executorch, torchao)"
# Core ML deployment targets and compute units when the spec has no `targets.coreml` block.
COREML_DEFAULTS = {
    "deployment_target": "iOS18", "compute_units": "cpu_only", "compute_precision": "fp16",
}


def missing(delegate: str = "xnnpack", lowering: bool = True) -> str | None:
    """Why ExecuTorch cannot be used on this host, or None when it can.

    Args:
        delegate: the spec's `targets.executorch.backend` (the Core ML delegate lowers with
            coremltools).
        lowering: whether the program is to be built (torchao, the delegate's converter) or
            only run (the executorch runtime alone).
    """
    needed = ["executorch"]
    if lowering:
        needed += ["torchao"] + (["coremltools"] if delegate == "coreml" else [])
    absent = absent_modules(needed)
    if absent:
        return f"executorch: {', '.join(absent)} missing: {INSTALL_HINT}"
    return None


def delegate_of(spec: "ResolvedSpec") -> str:
    """The spec's delegate: `targets.executorch.backend` (xnnpack, coreml or portable)."""
    et = spec.targets.executorch
    return et.backend if et is not None else "xnnpack"


def coreml_options(spec: "ResolvedSpec") -> dict[str, str]:
    """Deployment target, compute units and precision: the spec's `targets.coreml`, if any."""
    c = spec.targets.coreml
    return {k: getattr(c, k) for k in COREML_DEFAULTS} if c is not None else dict(COREML_DEFAULTS)


def partitioners(spec: "ResolvedSpec | None") -> list[Any]:
    """The partitioners of the spec's delegate (XNNPACK without a spec; none for portable)."""
    backend = delegate_of(spec) if spec is not None else "xnnpack"
    if backend == "portable":
        return []
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner(configs=_xnnpack_configs())]
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    from omnic.targets.coreml.convert import register_missing_ops

    # the delegate converts with coremltools' torch frontend: the same ops are missing or wrong
    # there as for the coreml target (index_copy, __and__, a bool ones_like)
    register_missing_ops()

    cfg = coreml_options(spec)
    target = getattr(ct.target, cfg["deployment_target"])
    units = {"cpu_only": ct.ComputeUnit.CPU_ONLY, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
             "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU, "all": ct.ComputeUnit.ALL}
    units = units[cfg["compute_units"]]
    precision = ct.precision.FLOAT16 if cfg["compute_precision"] == "fp16" else ct.precision.FLOAT32
    specs = CoreMLBackend.generate_compile_specs(
        minimum_deployment_target=target, compute_precision=precision, compute_unit=units,
        model_type=CoreMLBackend.MODEL_TYPE.MODEL,
    )
    # export_llm keeps the KV cache out of the Core ML delegate: the open-source Core ML runtime
    # of ExecuTorch does not carry Core ML state. ref: extension/llm/export/partitioner_lib.py
    return [CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=False)]


def _xnnpack_configs() -> list[Any]:
    """XNNPACK's partitioner configs, its unsqueeze refusing what its serializer refuses.

    XNNPACK reshapes (an unsqueeze among them) with one dynamic size at most, and its
    UnsqueezeCopyConfig (ExecuTorch 1.5) does not check that: an unsqueeze of a [T, T] tensor
    (the token-by-token products of a mamba2 layer's scan, T dynamic) is taken, then fails
    the lowering ("XNNPACK reshape only supports 1 dynamic dimension"). Such an unsqueeze
    stays out of the delegate instead, as ViewCopyConfig keeps a view with symbolic sizes out.
    A graph without one partitions exactly as with the stock configs.
      ref: backends/xnnpack/operators/op_squeeze.py (UnsqueezeVisitor, num_dynamic_dims <= 1)
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import (
        UnsqueezeCopyConfig,
    )
    from torch.fx.experimental.symbolic_shapes import free_symbols

    class OneDynamicSizeUnsqueeze(UnsqueezeCopyConfig):
        def check_constraints(self, node: Any, ep: Any) -> bool:
            if sum(1 for d in node.meta["val"].shape if free_symbols(d)) > 1:
                return False
            return super().check_constraints(node, ep)

    return [OneDynamicSizeUnsqueeze if c is UnsqueezeCopyConfig else c
            for c in ALL_PARTITIONER_CONFIGS]


def runtime_fixes() -> dict[Any, Any]:
    """Decompositions (for `run_decompositions`) of two ops ExecuTorch 1.5.1 computes otherwise
    than aten; each becomes the elementwise formula aten defines it by.

    - `remainder` -> `a - div(a, b, rounding_mode="floor") * b`: the runtime's remainder.Scalar
      and .Tensor of int64 take the dividend's sign (C's %: remainder(-3, 4) gives -3, aten 1),
      which breaks the slots of a sliding layer's ring (`Decoder._static_masks`); its floor
      division is right.
    - `gelu(approximate="tanh")` -> `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`: XNNPACK's
      partitioner takes `gelu.default` whatever its `approximate` and runs the exact (erf) GELU,
      ~1e-3 off in the logits of a GeGLU model (Gemma); the formula delegates as mul, add and
      tanh. An erf GELU is left to the stock path (NotImplemented).
      ref: backends/xnnpack/operators/op_gelu.py (XNNGelu, no approximation flag)
    """
    import torch

    def floor_remainder(a: Any, b: Any) -> Any:
        return a - torch.div(a, b, rounding_mode="floor") * b

    def tanh_gelu(x: Any, approximate: str = "none") -> Any:
        if approximate != "tanh":
            return NotImplemented
        # torch._refs.nn.functional.gelu, operation for operation
        k_beta = 1.41421356237309504880 * 1.12837916709551257390 * 0.5  # sqrt(2 / pi)
        return 0.5 * x * (1 + torch.tanh(k_beta * (x + 0.044715 * (x * x * x))))

    aten = torch.ops.aten
    return {aten.remainder.Scalar: floor_remainder, aten.remainder.Tensor: floor_remainder,
            aten.gelu.default: tanh_gelu}


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.").replace(".default", "")


def delegation_summary(graph_module: "torch.fx.GraphModule") -> dict[str, Any]:
    """Operators inside delegate partitions and outside them, counted by op name."""
    delegated: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    partitions = 0
    backends: Counter[str] = Counter()
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            lowered = getattr(graph_module, node.target)
            partitions += 1
            backends[lowered.backend_id] += 1
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and "getitem" not in str(inner.target):
                    delegated[_op_name(inner.target)] += 1
        elif node.op == "call_function":
            name = _op_name(node.target)
            if "executorch_call_delegate" in name or "getitem" in name:
                continue
            kept[name] += 1
    return {
        "delegated_ops": sum(delegated.values()),
        "non_delegated_ops": sum(kept.values()),
        "partitions": partitions,
        "backends": dict(sorted(backends.items())),
        "delegated": dict(sorted(delegated.items())),
        "not_delegated": dict(sorted(kept.items())),
    }


def runtime_ops(et_program: Any) -> dict[str, int]:
    """Operators the runtime must provide (kernels outside any delegate), by call count."""
    out: Counter[str] = Counter()
    for plan in et_program.executorch_program.execution_plan:
        names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
        for chain in plan.chains:
            for instr in chain.instructions:
                args = instr.instr_args
                if hasattr(args, "op_index"):
                    out[names[args.op_index]] += 1
                elif hasattr(args, "delegate_index"):
                    out["<delegate>"] += 1
    return dict(sorted(out.items()))


def require_runtime(delegate: str) -> None:
    """Raise NotRunnable unless this host has the ExecuTorch runtime with `delegate`'s kernels
    (XnnpackBackend, CoreMLBackend; the portable kernels are always there)."""
    runnable_unless(missing(delegate, lowering=False))
    from executorch.runtime import Runtime

    registered = Runtime.get().backend_registry.registered_backend_names
    needed = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend"}.get(delegate)
    if needed is not None and needed not in registered:
        raise NotRunnable(f"this ExecuTorch runtime has no {needed} (it has {registered}); "
                          + ("Core ML runs only on macOS/iOS" if delegate == "coreml" else ""))
