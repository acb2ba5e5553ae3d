"""Is apache-tvm importable here, which device triple does a spec cross-compile for, and how a
lowered directory opens in the Relax VM.

Shared by the target and its components.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.targets.base import absent_modules, runnable_unless

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

MISSING = "apache-tvm is not installed: install omnic[tvm] (apache-tvm==0.27.*)"


def tvm_missing() -> str | None:
    """Why apache-tvm cannot be used on this host, or None when it can."""
    return MISSING if absent_modules(["tvm"]) else None


def cross_triple(spec: "ResolvedSpec") -> tuple[str | None, str | None]:
    """(triple, where it came from): the tvm target's own, else the device preset's."""
    cfg = spec.targets.tvm
    if cfg is not None and cfg.target_triple:
        return cfg.target_triple, "targets.tvm.target_triple"
    if spec.device.target_triple:
        return spec.device.target_triple, "device.target_triple"
    return None, None


def require_tvm() -> None:
    """Raise NotRunnable when apache-tvm is missing."""
    runnable_unless(tvm_missing())


def open_vm(root: Path, meta: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """(device, `main` of a Relax VM, weight tensors in call order) of a lowered directory whose
    descriptor is `meta` (library, function, params, weights): the decoder's or a component's."""
    import tvm
    from safetensors.numpy import load_file
    from tvm import relax

    device = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(root / meta["library"])), device)
    stored = load_file(str(root / meta["params"]))
    return device, vm[meta["function"]], [tvm.runtime.tensor(stored[w["name"]], device)
                                          for w in meta["weights"]]
