"""Running a GGUF file on llama.cpp through llama-cpp-python, with llama.cpp's log captured.

llama.cpp reports format problems (a missing pre-tokenizer, an unused tensor, a disabled sliding
window, a bad special token id...) as log warnings and carries on. This target treats every
warning while loading as a failure, so the log is routed through `llama_log_set` into a list
instead of stderr.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import numpy as np

# ggml_log_level (ggml.h): 0 none, 1 info, 2 warn, 3 error, 4 debug, 5 continue previous line
LOG_WARN, LOG_ERROR, LOG_CONT = 2, 3, 5


class LlamaCppMissing(ImportError):
    """llama-cpp-python is not installed."""


def import_llama_cpp():  # noqa: ANN201 - the module
    """`llama_cpp`, or a one-line explanation of how to get it."""
    try:
        import llama_cpp
    except ImportError as err:
        raise LlamaCppMissing(
            "llama-cpp-python is not installed: pip install 'omnic[gguf]' (llama-cpp-python==0.3.36)"
        ) from err
    return llama_cpp


@contextlib.contextmanager
def capture_llama_log() -> Iterator[list[tuple[int, str]]]:
    """Collect llama.cpp/ggml log records [(level, text)] instead of printing them.

    Continuation records (level 5) take the level of the line they continue. The previous
    callback (llama-cpp-python's own) is restored on exit.
    """
    llama_cpp = import_llama_cpp()
    from llama_cpp import _logger

    records: list[tuple[int, str]] = []

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, _user: object) -> None:
        msg = text.decode("utf-8", errors="replace")
        if level == LOG_CONT and records:
            prev_level, prev = records[-1]
            records[-1] = (prev_level, prev + msg)
        else:
            records.append((level, msg))

    llama_cpp.llama_log_set(_callback, None)
    try:
        yield records
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, None)


def warnings_of(records: list[tuple[int, str]]) -> list[str]:
    """The warning and error lines of a captured log."""
    return [text.strip() for level, text in records if level in (LOG_WARN, LOG_ERROR) and text.strip()]


def default_threads() -> int:
    """Threads for llama.cpp: OMNIC_THREADS, else at most 4 of the host's cores."""
    env = os.environ.get("OMNIC_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


class LlamaCppRunner:
    """`Runner` over a llama.cpp context: feed tokens, get every position's logits.

    Attributes:
        load_warnings: llama.cpp's warnings while loading (empty for a well-formed file).
    """

    def __init__(self, path: str, n_ctx: int, n_threads: int | None = None,
                 kv_type: str = "F32") -> None:
        llama_cpp = import_llama_cpp()
        from gguf import GGMLQuantizationType

        kv = int(GGMLQuantizationType[kv_type])
        with capture_llama_log() as records:
            self.llama = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, 512),
                n_threads=n_threads or default_threads(),
                n_threads_batch=n_threads or default_threads(),
                logits_all=True,
                verbose=False,
                # the spec's KV cache: F32 ("none") or Q8_0 ("int8", needs flash attention)
                type_k=kv,
                type_v=kv,
                flash_attn=kv_type != "F32",
                swa_full=True,  # keep every position so evaluation can resume anywhere
                # -1: take YaRN betas from the file (llama-cpp-python passes 32/1 otherwise)
                yarn_beta_fast=-1.0,
                yarn_beta_slow=-1.0,
            )
        self.load_log = records
        self.load_warnings = warnings_of(records)
        self.n_vocab = self.llama.n_vocab()
        self.n_ctx = n_ctx

    def reset(self) -> None:
        """Forget the KV cache; the next call starts at position 0."""
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()  # noqa: SLF001 - llama-cpp-python has no public call

    def forward(self, tokens: "np.ndarray") -> "np.ndarray":
        """Append int64 tokens [T] at the current position; return float32 logits [T, vocab]."""
        import numpy as np

        ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
        start = self.llama.n_tokens
        if start + len(ids) > self.n_ctx:
            raise ValueError(f"{start + len(ids)} positions exceed the context of {self.n_ctx}")
        self.llama.eval(ids)
        return np.array(self.llama.scores[start:start + len(ids), :], dtype=np.float32)

    def close(self) -> None:
        """Free the llama.cpp model and context now rather than at garbage collection."""
        self.llama.close()
