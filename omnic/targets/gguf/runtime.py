"""Running a GGUF file on llama.cpp through llama-cpp-python, with llama.cpp's log captured.

llama.cpp reports format problems (a missing pre-tokenizer, an unused tensor, a disabled sliding
window, a bad special token id...) as log warnings and carries on. This target treats every
warning while loading as a failure, so the log is routed through `llama_log_set` into a list
instead of stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from omnic.formats.gguf_families import LLAMA_CPP_CTX_PAD
from omnic.targets.gguf.rules import MAX_UBATCH

if TYPE_CHECKING:
    import numpy as np

# ggml_log_level of the vendored ggml.h: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continue the
# previous line (llama-cpp-python's own _logger still maps the older order).
LOG_WARN, LOG_ERROR, LOG_CONT = 3, 4, 5


def import_llama_cpp():  # noqa: ANN201 - the module
    """`llama_cpp`; NotRunnable (backend.missing) when it is not installed."""
    from omnic.targets.gguf.backend import require_llama_cpp

    require_llama_cpp()
    import llama_cpp

    return llama_cpp


@contextlib.contextmanager
def capture_llama_log() -> Iterator[list[tuple[int, str]]]:
    """Collect llama.cpp/ggml log records [(level, text)] instead of printing them.

    Continuation records (level 5) and the rest of an unterminated line are joined to the line
    they continue (keeping the higher level). The previous
    callback (llama-cpp-python's own) is restored on exit.
    """
    llama_cpp = import_llama_cpp()
    from llama_cpp import _logger

    records: list[tuple[int, str]] = []

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, _user: object) -> None:
        msg = text.decode("utf-8", errors="replace")
        # a record continues the previous one when marked so, or when the previous line was
        # left open (llama.cpp prints some warnings in two calls, the first without "\n")
        if records and (level == LOG_CONT or not records[-1][1].endswith("\n")):
            prev_level, prev = records[-1]
            records[-1] = (max(prev_level, level if level != LOG_CONT else 0), prev + msg)
        else:
            records.append((level, msg))

    llama_cpp.llama_log_set(_callback, None)
    try:
        yield records
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, None)


# llama-kv-cache.cpp [TAG_V_CACHE_VARIABLE]: logged when layers' V widths differ without flash
# attention. LFM2's convolution layers have no KV (head_count_kv 0) and so count as width 0.
_V_PADDING = "the V embeddings have different sizes across layers and FA is not enabled - " \
             "padding V cache to {}"


def warnings_of(records: list[tuple[int, str]], n_ctx: int | None = None,
                v_width: int | None = None) -> list[str]:
    """The warning and error lines of a captured log.

    Args:
        n_ctx: the context asked for. llama.cpp rounds every context up to a multiple of 256
            and then warns that the rounded size exceeds the model's context (llama-context.cpp,
            "n_ctx_seq (256) > n_ctx_train (64)"); that one line, with exactly those numbers, is
            llama.cpp's allocation, not the file, and the runner never goes past n_ctx.
        v_width: the one V width of every layer that has a KV cache (`uniform_v_width`): the
            V-padding warning to exactly that width pads no layer, and is not reported.
    """
    pad = LLAMA_CPP_CTX_PAD
    padded = f"n_ctx_seq ({-(-n_ctx // pad) * pad}) > n_ctx_train ({n_ctx})" if n_ctx else None
    no_op_v = _V_PADDING.format(v_width) if v_width else None
    out = []
    for level, text in records:
        line = text.strip()
        if level in (LOG_WARN, LOG_ERROR) and line and not (padded and padded in line) and not (
                no_op_v and line.endswith(no_op_v)):
            out.append(line)
    return out


def uniform_v_width(path: str) -> int | None:
    """The V width (n_kv_heads * value_length) shared by every layer of GGUF `path` that has a
    KV cache, when its per-layer `head_count_kv` array also holds zeros (layers without one, as
    LFM2's convolutions and Granite 4's Mamba-2 layers); None otherwise. value_length defaults
    to embedding_length / head_count, as llama.cpp's loader has it (convert_hf_to_gguf writes
    no value_length for granitehybrid)."""
    import gguf

    reader = gguf.GGUFReader(path)

    def key(name: str):  # noqa: ANN202 - the field's value, None when absent
        field = reader.get_field(name.format(arch=reader.get_field("general.architecture")
                                             .contents()))
        return None if field is None else field.contents()

    heads, width = key(gguf.Keys.Attention.HEAD_COUNT_KV), key(gguf.Keys.Attention.VALUE_LENGTH)
    n_embd, n_head = key(gguf.Keys.LLM.EMBEDDING_LENGTH), key(gguf.Keys.Attention.HEAD_COUNT)
    if width is None and n_embd and n_head:
        width = int(n_embd) // int(n_head)
    if not isinstance(heads, list) or width is None or len(set(heads) - {0}) != 1:
        return None
    return int(max(heads)) * int(width)


_KV_CACHE = re.compile(r"llama_kv_cache: size = .*?\(\s*(\d+) cells,\s*(\d+) layers")


def kv_caches(records: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(cells, layers) of each KV cache llama.cpp allocated, from its load log.

    One cache for a model without sliding windows; for one with them the full layers' cache
    (n_ctx cells, padded to 256) and then the sliding layers' (llama-kv-cache-iswa.cpp: with
    swa_full off, GGML_PAD(min(n_ctx, n_swa + n_ubatch), 256) cells). Each cell of a layer holds
    n_kv_heads * head_dim keys and as many values of the cache type.
    """
    out = []
    for _, text in records:
        m = _KV_CACHE.search(text)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def extra_buffer_types() -> bool:
    """Whether llama.cpp may repack weights into its "extra" CPU buffer types (AMX, repack).

    On, as llama.cpp's own defaults have it, unless the CPU has AMX: with a llama-cpp-python
    0.3.36 built natively on an AMX-capable x86 host, every quantized matmul crashes in
    `ggml_backend_amx_mul_mat` (seen on this project's CI host). OMNIC_LLAMA_EXTRA_BUFTS=0|1
    decides either way. The numbers are the same either way; repacking is a speed-up (Q4_0 of
    SmolLM2-135M at 1 thread: 82 tok/s without, 124 with, on an AMD EPYC host).
    """
    forced = os.environ.get("OMNIC_LLAMA_EXTRA_BUFTS")
    if forced in ("0", "1"):
        return forced == "1"
    return not cpu_has_amx()


def cpu_has_amx() -> bool:
    """Whether this CPU advertises AMX (the `amx_*` flags of /proc/cpuinfo; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag.startswith("amx") for line in text.splitlines()
               if line.startswith("flags") for flag in line.split(":", 1)[1].split())


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python's `Llama` exposes no `use_extra_bufts`; set it on the defaults it reads."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched():  # noqa: ANN202
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


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
        kv_caches: (cells, layers) of each KV cache llama.cpp allocated (`kv_caches`): sliding
            layers get the window-sized cache llama.cpp allows.
    """

    def __init__(self, path: str, n_ctx: int, n_threads: int | None = None,
                 kv_type: str = "F32") -> None:
        llama_cpp = import_llama_cpp()
        from gguf import GGMLQuantizationType

        kv = int(GGMLQuantizationType[kv_type])
        with capture_llama_log() as records, _model_params(extra_buffer_types()):
            self.llama = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, MAX_UBATCH),
                n_threads=n_threads or default_threads(),
                n_threads_batch=n_threads or default_threads(),
                logits_all=True,
                verbose=False,
                # the spec's KV cache: F32 ("none") or Q8_0 ("int8", needs flash attention)
                type_k=kv,
                type_v=kv,
                flash_attn=kv_type != "F32",
                # sliding layers keep a window-sized cache (GGML_PAD(window + n_ubatch, 256)
                # cells, llama-kv-cache-iswa.cpp) rather than llama.cpp's default full-size one,
                # which logs a warning; the runner only appends or resets, which it supports
                swa_full=False,
                # -1: take YaRN betas from the file (llama-cpp-python passes 32/1 otherwise)
                yarn_beta_fast=-1.0,
                yarn_beta_slow=-1.0,
            )
        self.load_log = records
        padded_v = any(_V_PADDING.format("") in text for _, text in records)
        self.load_warnings = warnings_of(records, n_ctx,
                                         uniform_v_width(path) if padded_v else None)
        self.kv_caches = kv_caches(records)
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


def artifact_file(build_dir: Path, rel: str) -> Path:
    """The artifact file `rel` under build_dir (or the only file of that name beneath it)."""
    path = build_dir / rel
    if path.exists():
        return path
    found = sorted(build_dir.rglob(Path(rel).name))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{rel} not found under {build_dir}")

