"""Is coremltools importable here? One answer for the target, its components and runners.

Converting needs coremltools on any host; running a package needs macOS as well (`NEEDS_MACOS`).
"""

from __future__ import annotations

import platform

from omnic.targets.base import absent_modules, runnable_unless

INSTALL_HINT = "install omnic[coreml]"
NEEDS_MACOS = "needs macOS"


def missing() -> str | None:
    """Why coremltools cannot be used on this host, or None when it can (found without importing
    it: coremltools imports torch, and pre-flight stays torch-free)."""
    if absent_modules(["coremltools"]):
        return f"coreml: coremltools is not installed: {INSTALL_HINT}"
    return None


def require_coremltools() -> None:
    """Raise NotRunnable when coremltools is missing."""
    runnable_unless(missing())


def is_macos() -> bool:
    """Whether this host can run Core ML models (Core ML itself exists only on Apple's OSes)."""
    return platform.system() == "Darwin"
