"""Is apache-tvm importable here, and which device triple does a spec cross-compile for?

Shared by the target and its components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

MISSING = "apache-tvm is not installed: install omnic[tvm] (apache-tvm==0.27.*)"


def tvm_missing() -> str | None:
    try:
        import tvm  # noqa: F401
    except ImportError:
        return MISSING
    return None


def cross_triple(spec: "ResolvedSpec") -> tuple[str | None, str | None]:
    """(triple, where it came from): the tvm target's own, else the device preset's."""
    cfg = spec.targets.tvm
    if cfg is not None and cfg.target_triple:
        return cfg.target_triple, "targets.tvm.target_triple"
    if spec.device.target_triple:
        return spec.device.target_triple, "device.target_triple"
    return None, None
