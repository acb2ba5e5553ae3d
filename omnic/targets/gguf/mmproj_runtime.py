"""Running llama.cpp's `mmproj` file (mmproj.py writes it) with libmtmd, as a ComponentRunner.

The runner (`MmprojRunner`) loads the mmproj with mtmd beside the build's decoder GGUF
(vocabulary and n_embd only) and encodes one image chunk. mtmd takes 8-bit RGB images, the
golden input is float pixel values: the runner writes them into clip's `inp_raw` input from the
scheduler's eval callback (mtmd_context_params.cb_eval), so llama.cpp encodes exactly the
pixels the PyTorch reference sees. That llama.cpp's own preprocessing of an image_size x
image_size image equals omnic's normalisation is checked separately (`run_image`, tests).
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import numpy as np

    from omnic.targets.base import Artifact


class _GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` of the vendored ggml.h (GGML_MAX_DIMS 4, GGML_MAX_SRC 10,
    GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64); its size is checked against libggml at load."""


_GgmlTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32), ("src", ctypes.POINTER(_GgmlTensor) * 10),
    ("view_src", ctypes.POINTER(_GgmlTensor)), ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]
_GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type, padding[4]


def _check_tensor_layout(llama_cpp) -> None:  # noqa: ANN001 - the module
    """The pixels are written through `_GgmlTensor`: refuse to run if libggml's differs."""
    found = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base.*"))
    if not found:
        raise RuntimeError("libggml-base not found beside llama-cpp-python: cannot check the "
                           "ggml_tensor layout the pixels are handed over with")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    expected = lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE
    if ctypes.sizeof(_GgmlTensor) != expected:
        raise RuntimeError(f"ggml_tensor is {expected} bytes in this libggml, omnic's mirror "
                           f"{ctypes.sizeof(_GgmlTensor)}: cannot hand pixels to clip")


@contextlib.contextmanager
def _captured_logs() -> Iterator[list[tuple[int, str]]]:
    """llama.cpp's and mtmd/clip's log records instead of stderr: runtime.py's capture, with
    mtmd's own logger routed into the same list."""
    import llama_cpp
    from llama_cpp import _logger
    from llama_cpp import mtmd_cpp as mtmd

    from omnic.targets.gguf.runtime import LOG_CONT, capture_llama_log

    with capture_llama_log() as records:
        @llama_cpp.llama_log_callback
        def _cb(level: int, text: bytes, _user: object) -> None:
            msg = text.decode("utf-8", errors="replace")
            if records and (level == LOG_CONT or not records[-1][1].endswith("\n")):
                prev_level, prev = records[-1]  # a continuation, as capture_llama_log joins them
                records[-1] = (max(prev_level, level if level != LOG_CONT else 0), prev + msg)
            else:
                records.append((level, msg))

        mtmd.mtmd_log_set(_cb, None)
        try:
            yield records
        finally:
            mtmd.mtmd_log_set(_logger.llama_log_callback, None)


class MmprojRunner:
    """`ComponentRunner` over libmtmd: pixel_values [1, 3, H, W] -> image_embeds [1, N, d_dec]."""

    def __init__(self, mmproj: str, text_model: str, image_size: int, n_tokens: int, n_embd: int,
                 projector_type: str, n_threads: int | None = None) -> None:
        from llama_cpp import mtmd_cpp as mtmd

        from omnic.targets.gguf.runtime import (default_threads, extra_buffer_types,
                                                import_llama_cpp, warnings_of)

        llama_cpp = import_llama_cpp()
        _check_tensor_layout(llama_cpp)
        self.size, self.n_tokens, self.n_embd = image_size, n_tokens, n_embd
        self._inject: "np.ndarray | None" = None
        self._seen: "np.ndarray | None" = None
        self._error: str | None = None  # an exception cannot cross the C callback
        self._cb = llama_cpp.ggml_backend_sched_eval_callback(self._eval)
        with _captured_logs() as records:
            mp = llama_cpp.llama_model_default_params()
            mp.vocab_only = True  # mtmd needs the vocabulary and n_embd, not the weights
            mp.use_extra_bufts = extra_buffer_types()
            self.model = llama_cpp.llama_model_load_from_file(text_model.encode(), mp)
            if not self.model:
                raise RuntimeError(f"llama.cpp could not load {text_model}")
            params = mtmd.mtmd_context_params_default()
            params.use_gpu = False
            params.n_threads = n_threads or default_threads()
            params.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED: f32 K/V, as the reference
            params.warmup = False
            params.print_timings = False
            if projector_type == "lfm2":  # keep llama.cpp from resizing to its 64-256 tokens
                params.image_min_tokens = params.image_max_tokens = n_tokens
            params.cb_eval = self._cb
            self.ctx = mtmd.mtmd_init_from_file(mmproj.encode(), self.model, params)
        self.load_log = records
        self.load_warnings = warnings_of(records)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            errors = [t.strip() for lvl, t in records if lvl >= 3] or ["no log"]
            raise RuntimeError("mtmd could not load " + Path(mmproj).name + ": "
                               + " | ".join(errors[:5]))

    def _eval(self, t: int, ask: bool, _user: object) -> bool:
        """Before the graph runs (ask phase), copy the float pixels into clip's `inp_raw`."""
        import numpy as np

        if not ask or self._seen is not None or self._error is not None:
            return False
        node = ctypes.cast(t, ctypes.POINTER(_GgmlTensor)).contents
        for src in node.src:
            if not src or src.contents.name != b"inp_raw":
                continue
            raw = src.contents
            shape = tuple(raw.ne[3 - i] for i in range(4))  # [batch, channels, y, x]
            if raw.type != 0 or raw.nb[0] != 4 or shape != (1, 3, self.size, self.size):
                self._error = (f"clip inp_raw is not f32 {[1, 3, self.size, self.size]}: "
                               f"type {raw.type} shape {list(shape)}")
                return False
            buf = np.ctypeslib.as_array(ctypes.cast(raw.data, ctypes.POINTER(ctypes.c_float)),
                                        shape=shape)
            self._seen = buf.copy()
            if self._inject is not None:
                buf[...] = self._inject  # ggml's [x, y, c] is planar CHW: torch's layout
        return False

    def _encode(self, rgb: "np.ndarray", inject: "np.ndarray | None") -> "np.ndarray":
        """Tokenize one image, encode its chunk, return [1, N, d_dec] (log kept off stderr)."""
        import numpy as np
        from llama_cpp import mtmd_cpp as mtmd

        self._inject, self._seen, self._error = inject, None, None
        data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(np.ascontiguousarray(rgb).tobytes())
        bitmap = mtmd.mtmd_bitmap_init(self.size, self.size, data)
        chunks = mtmd.mtmd_input_chunks_init()
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False,
                                    parse_special=True)
        try:
            with _captured_logs() as records:
                out = self._encode_chunks(chunks, bitmap, text, inject is not None)
            errors = [t.strip() for lvl, t in records if lvl >= 4]
            if errors:
                raise RuntimeError("mtmd: " + " | ".join(errors[:5]))
            return out
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
            self._inject = None

    def _encode_chunks(self, chunks, bitmap, text, injected: bool) -> "np.ndarray":  # noqa: ANN001
        import numpy as np
        from llama_cpp import mtmd_cpp as mtmd

        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
            raise RuntimeError("mtmd_tokenize failed")
        images = [mtmd.mtmd_input_chunks_get(chunks, i)
                  for i in range(mtmd.mtmd_input_chunks_size(chunks))]
        images = [c for c in images if mtmd.mtmd_input_chunk_get_type(c) == 1]  # IMAGE
        if len(images) != 1:
            raise RuntimeError(f"mtmd made {len(images)} image chunks of one image "
                               "(llama.cpp tiled or resized it)")
        n = mtmd.mtmd_input_chunk_get_n_tokens(images[0])
        if n != self.n_tokens:
            raise RuntimeError(f"mtmd gives {n} image tokens, omnic {self.n_tokens}")
        if mtmd.mtmd_encode_chunk(self.ctx, images[0]) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")
        if self._error is not None:
            raise RuntimeError(self._error)
        if injected and self._seen is None:
            raise RuntimeError("clip's inp_raw was never seen: pixels not handed over")
        d = mtmd.mtmd_get_output_embd(self.ctx)
        out = np.ctypeslib.as_array(d, shape=(n * self.n_embd,))
        return out.reshape(1, n, self.n_embd).astype(np.float32, copy=True)

    def run(self, x: "np.ndarray") -> "np.ndarray":
        """float32 pixel_values [1, 3, S, S] (normalised) -> image_embeds [1, N, d_dec]."""
        import numpy as np

        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.shape != (1, 3, self.size, self.size):
            raise ValueError(f"gguf mmproj: input of shape {list(arr.shape)}, the artifact "
                             f"takes {[1, 3, self.size, self.size]}")
        # the bitmap only sets the chunk's size; its pixels are replaced by `arr` in _eval
        return self._encode(np.zeros((self.size, self.size, 3), np.uint8), arr[0])

    def run_image(self, rgb: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
        """llama.cpp's own path for an 8-bit RGB image [S, S, 3]: (embeddings, the float pixels
        its preprocessing handed to the encoder [1, 3, S, S])."""
        out = self._encode(rgb, None)
        return out, self._seen

    def close(self) -> None:
        """Free the mtmd context and the vocabulary-only text model."""
        import llama_cpp
        from llama_cpp import mtmd_cpp as mtmd

        if getattr(self, "ctx", None):
            mtmd.mtmd_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def load_mmproj(artifact: "Artifact", build_dir: Path) -> MmprojRunner:
    """The runner of an mmproj artifact; raises if llama.cpp warned while loading it, and
    NotRunnable when this llama-cpp-python has no libmtmd or another ggml_tensor layout."""
    from omnic.targets.base import NotRunnable
    from omnic.targets.gguf.runtime import artifact_file

    try:
        import llama_cpp
        from llama_cpp import mtmd_cpp  # noqa: F401 - libmtmd ships since llama-cpp-python 0.3.x
        _check_tensor_layout(llama_cpp)
    except (ImportError, OSError, RuntimeError) as err:
        raise NotRunnable(f"llama.cpp mmproj: {err}") from None
    path = artifact_file(build_dir, artifact.path)
    text = artifact_file(build_dir,
                         str(Path(artifact.path).parent / artifact.details["text_model"]))
    (_, shape), = artifact.signature["inputs"].items()
    (_, out), = artifact.signature["outputs"].items()
    runner = MmprojRunner(str(path), str(text), image_size=int(shape["shape"][-1]),
                          n_tokens=int(out["shape"][1]), n_embd=int(out["shape"][2]),
                          projector_type=artifact.details["projector_type"])
    if runner.load_warnings:
        runner.close()
        raise RuntimeError("llama.cpp warned while loading " + path.name + ": "
                           + " | ".join(runner.load_warnings[:5]))
    return runner
