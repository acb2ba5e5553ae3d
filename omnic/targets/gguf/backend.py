"""Are gguf-py and llama-cpp-python importable here? One answer for the target, its mmproj and
runners.

Writing a GGUF needs gguf-py; llama.cpp (llama-cpp-python) runs the files and makes the K-quant
mixtures with its own quantizer.
"""

from __future__ import annotations

from omnic.targets.base import absent_modules, runnable_unless

INSTALL_HINT = "install omnic[gguf] (gguf, llama-cpp-python==0.3.36)"


def missing(llama_cpp: bool = True) -> str | None:
    """Why GGUF files cannot be written (gguf-py) or, with `llama_cpp`, quantized to a K mixture
    and run (llama-cpp-python) on this host; None when they can."""
    absent = absent_modules(["gguf"] + (["llama_cpp"] if llama_cpp else []))
    if absent:
        names = [{"llama_cpp": "llama-cpp-python"}.get(m, m) for m in absent]
        return f"gguf: {', '.join(names)} missing: {INSTALL_HINT}"
    return None


def require_llama_cpp() -> None:
    """Raise NotRunnable when gguf-py or llama-cpp-python is missing."""
    runnable_unless(missing())
