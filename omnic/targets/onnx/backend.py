"""Is the ONNX toolchain importable here? One answer for the target, its components and runners."""

from __future__ import annotations

from omnic.targets.base import NotRunnable

INSTALL_HINT = "install omnic[onnx]"


def missing() -> str | None:
    """Why the ONNX toolchain cannot be used on this host, or None when it can."""
    try:
        import onnx_ir  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        return f"onnx: {err.name} is missing: {INSTALL_HINT}"
    return None


def require_backend() -> None:
    """Raise NotRunnable when the ONNX toolchain is missing."""
    reason = missing()
    if reason is not None:
        raise NotRunnable(reason)
