"""Is the ONNX toolchain importable here? One answer for the target, its components and runners."""

from __future__ import annotations

from omnic.targets.base import absent_modules, runnable_unless

INSTALL_HINT = "install omnic[onnx]"


def missing() -> str | None:
    """Why the ONNX toolchain cannot be used on this host, or None when it can."""
    absent = absent_modules(["onnx_ir", "onnxruntime", "onnxscript"])
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        return f"onnx: {' and '.join(absent)} {verb} missing: {INSTALL_HINT}"
    return None


def require_backend() -> None:
    """Raise NotRunnable when the ONNX toolchain is missing."""
    runnable_unless(missing())
