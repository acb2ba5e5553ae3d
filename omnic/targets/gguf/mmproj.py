"""llama.cpp's `mmproj` file: the spec's vision encoder (tower + projector) beside the decoder GGUF.

llama.cpp keeps encoders out of the text model: `llama-mtmd-cli -m text.gguf --mmproj mmproj.gguf`
loads a second GGUF (architecture "clip", `clip.*` keys, `v.*` / `mm.*` tensors) with libmtmd.
omnic writes one when llama.cpp's clip graphs compute exactly what omnic's vision encoder does:

    omnic vision encoder                      llama.cpp (clip.projector_type, graph)
    siglip/vit tower + mlp                    "mlp"   llava graph, clip.vision.feature_layer = n_layers
    siglip/vit tower + pixel_shuffle_mlp      "lfm2"  siglip graph: patch merge (Idefics3 order) + mm.1, GELU, mm.2

The tower is the same in both: patch conv (+bias), learned positions, pre-LayerNorm blocks with
biased q/k/v/o and up/down, a final LayerNorm, tower activation gelu_tanh (`clip.use_gelu`) or
quick_gelu (clip's default). Everything else is a pre-flight problem naming the field and the
nearest choice llama.cpp has (`mmproj_problems`): exact-erf GELU in the tower, the CLIP class
token (see _CLASS_TOKEN), mean pooling, a linear projector, audio, sensors and the action head.

One documented approximation: omnic's projector GELU is exact (erf, as LLaVA's nn.GELU), llama.cpp
runs its tanh form there. The two differ by at most 4.7e-4 per activation, below the rounding of
ggml's own CPU GELU (an fp16 lookup table: up to 2e-3 for |x| < 3, ggml-cpu/vec.h GGML_GELU_FP16),
so the golden check cannot tell them apart and the projector has no spec field to choose.

Golden: the runner (`MmprojRunner`) loads the mmproj with mtmd beside the build's decoder GGUF
(vocabulary and n_embd only) and encodes one image chunk. mtmd takes 8-bit RGB images, the
golden input is float pixel values: the runner writes them into clip's `inp_raw` input from the
scheduler's eval callback (mtmd_context_params.cb_eval), so llama.cpp encodes exactly the
pixels the PyTorch reference sees. That llama.cpp's own preprocessing of an image_size x
image_size image equals omnic's normalisation is checked separately (`run_image`, tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from omnic.constants import Components, GgufKeys, Targets
from omnic.targets.base import Problem

if TYPE_CHECKING:
    import numpy as np

    from omnic.model.components import Component
    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec
    from omnic.spec.modalities import Vision
    from omnic.targets.base import Artifact

# ref: https://github.com/ggml-org/llama.cpp/blob/master/tools/mtmd/clip-impl.h (KEY_FEATURE_LAYERS;
# gguf-py 0.19 has no constant for it). The llava graph runs n_layer - 1 blocks (LLaVA's
# vision_feature_layer -2) unless the deepest feature layer is given: n_layer runs them all.
KEY_FEATURE_LAYER = "clip.vision.feature_layer"
# LFM2's preprocessing keeps images between 64 and 256 tokens (clip.cpp set_limit_image_tokens).
LFM2_TOKENS = (64, 256)
# The CLIP class token: the llava graph of this llama.cpp appends it after the patches
# (ggml_concat(patches, class_embd)) yet selects rows 1..N as the patches, so patch 0 is lost and
# the class token is projected in its place (measured: rows shift by one). ref: llama.cpp
# tools/mtmd/models/llava.cpp and clip.cpp PROJECTOR_TYPE_MLP "patches" input.
_CLASS_TOKEN = ("the llava graph of llama.cpp (llama-cpp-python 0.3.36) drops patch 0 when a "
                "class token is present (it appends the class token and skips the first row)")


@dataclass(frozen=True)
class MmprojPlan:
    """How omnic's vision encoder maps onto one llama.cpp projector type."""

    projector_type: str  # clip.projector_type: "mlp" | "lfm2"
    fc: tuple[str, str]  # GGUF names of the projector's two linears
    use_gelu: bool  # tower activation gelu_tanh (clip.use_gelu) rather than quick_gelu
    scale_factor: int | None  # lfm2: the pixel-shuffle ratio
    feature_layer: int | None  # mlp: run every block


def plan_mmproj(v: "Vision") -> tuple[MmprojPlan | None, list[Problem]]:
    """The llama.cpp projector type for `v`, or the problems that prevent an exact one."""
    at = "modalities.vision"
    problems: list[Problem] = []

    def no(field: str, message: str) -> None:
        problems.append(Problem(Targets.GGUF, f"{at}.{field}", message))

    if v.act == "gelu":
        no("activation", "llama.cpp's clip encoder (mlp/lfm2 projectors) runs gelu_tanh "
           "(clip.use_gelu) or quick_gelu, not the exact erf GELU; nearest: gelu_tanh")
    if v.class_token:
        no("kind", f"kind clip has a class token and {_CLASS_TOKEN}; nearest: siglip")
    if v.pooling != "none":
        no("pooling", "llama.cpp's mmproj projectors keep every patch token (no mean pooling); "
           "nearest: none")
    if v.projector == "linear":
        no("projector", "llama.cpp has no single-Linear-with-bias vision projector (idefics3 is "
           "bias-free after a pixel shuffle, mlp applies GELU after mm.0); nearest: mlp")
    if v.channels != 3:
        no("channels", f"llama.cpp's mtmd takes RGB images (3 channels), got {v.channels}; "
           "nearest: 3")
    shuffle = v.projector == "pixel_shuffle_mlp" and v.pixel_shuffle_factor > 1
    if v.projector != "linear" and not shuffle and v.ffn_width == v.d_model:
        # clip.cpp swaps ffn_up/ffn_down of mlp projectors whose ffn_down has d_model inputs
        # (a fix for legacy files), which an ffn_hidden == d_model tower always triggers
        no("ffn_hidden", f"ffn_hidden equal to d_model ({v.d_model}) makes llama.cpp's mlp "
           "loader swap ffn_up and ffn_down (a legacy-layout fix in clip.cpp); nearest: "
           f"{4 * v.d_model}")
    if problems:
        return None, problems
    if shuffle:
        return MmprojPlan("lfm2", ("mm.1", "mm.2"), v.act == "gelu_tanh",
                          v.pixel_shuffle_factor, None), []
    return MmprojPlan("mlp", ("mm.0", "mm.2"), v.act == "gelu_tanh", None, v.n_layers), []


def mmproj_problems(spec: "ResolvedSpec") -> list[Problem]:
    """Every modality of `spec` llama.cpp cannot take from omnic, naming the field (torch-free)."""
    mods = spec.modalities
    problems: list[Problem] = []
    if mods.vision is not None:
        problems += plan_mmproj(mods.vision)[1]
    if mods.audio is not None:
        problems.append(Problem(Targets.GGUF, "modalities.audio", "omnic writes the vision "
                                "encoder as llama.cpp's mmproj, not the Whisper-style audio "
                                "encoder (llama.cpp's qwen2a/ultravox audio projectors are other "
                                "layouts); nearest: disable targets.gguf for audio specs"))
    if mods.sensors is not None:
        problems.append(Problem(Targets.GGUF, "modalities.sensors", "llama.cpp has no input for "
                                "continuous sensor vectors; nearest: disable targets.gguf"))
    if mods.action_head is not None:
        problems.append(Problem(Targets.GGUF, "modalities.action_head", "llama.cpp has no "
                                "regression head on hidden states; nearest: disable targets.gguf"))
    return problems


def tensor_names(v: "Vision", plan: MmprojPlan) -> dict[str, str]:
    """omnic vision_encoder state_dict name -> GGUF tensor name (gguf-py's MODEL_ARCH.MMPROJ)."""
    out = {"tower.patch_embed.weight": "v.patch_embd.weight",
           "tower.pos_embed": "v.position_embd.weight"}
    if v.patch_bias:
        out["tower.patch_embed.bias"] = "v.patch_embd.bias"
    for i in range(v.n_layers):
        for ours, theirs in (("attn_norm", "ln1"), ("attn.q", "attn_q"), ("attn.k", "attn_k"),
                             ("attn.v", "attn_v"), ("attn.o", "attn_out"), ("ffn_norm", "ln2"),
                             ("ffn.up", "ffn_up"), ("ffn.down", "ffn_down")):
            for kind in ("weight", "bias"):
                out[f"tower.layers.{i}.{ours}.{kind}"] = f"v.blk.{i}.{theirs}.{kind}"
    if v.post_norm:
        out.update({"tower.post_norm.weight": "v.post_ln.weight",
                    "tower.post_norm.bias": "v.post_ln.bias"})
    for ours, theirs in zip(("projector.fc1", "projector.fc2"), plan.fc):
        out[f"{ours}.weight"] = f"{theirs}.weight"
        out[f"{ours}.bias"] = f"{theirs}.bias"
    return out


def _stored_type(name: str, ndim: int, file_type: str) -> str:
    """F16 files store matrices and the patch embedding in F16 (as convert_hf_to_gguf's mmproj),
    biases, norms and the position table stay F32."""
    if file_type == "F16" and ((ndim == 2 and "position_embd" not in name) or ndim == 4):
        return "F16"
    return "F32"


def mmproj_file_type(decoder_file_type: str) -> str:
    """F16 beside an F16 decoder, else F32 (omnic's components are unquantized)."""
    return "F16" if decoder_file_type == "F16" else "F32"


def write_mmproj(path: Path, spec: "ResolvedSpec", component: "Component", file_type: str
                 ) -> dict[str, Any]:
    """Write the mmproj GGUF; return what it stores ({"tensor_types", "bytes_by_type", ...})."""
    import gguf
    import numpy as np

    import omnic
    from omnic.targets.gguf.write import spec_digest

    v = spec.modalities.vision
    plan, problems = plan_mmproj(v)
    if plan is None:
        raise ValueError("gguf mmproj: " + "; ".join(map(str, problems)))
    names = tensor_names(v, plan)
    state = component.module.state_dict()
    missing = sorted(set(state) ^ set(names))
    if missing:
        raise ValueError(f"gguf mmproj: state dict and tensor map differ on {missing[:4]}")

    w = gguf.GGUFWriter(str(path), "clip")  # general.architecture = clip (clip.cpp's arch)
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(spec.name)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if file_type == "F16"
                        else gguf.LlamaFileType.ALL_F32))
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(plan.projector_type)
    w.add_vision_image_size(v.image_size)
    w.add_vision_patch_size(v.patch_size)
    w.add_vision_embedding_length(v.d_model)
    w.add_vision_feed_forward_length(v.ffn_width)
    w.add_vision_block_count(v.n_layers)
    w.add_vision_head_count(v.n_heads)
    w.add_vision_attention_layernorm_eps(v.eps)
    w.add_vision_projection_dim(spec.model.d_model)
    w.add_vision_image_mean([float(x) for x in v.mean])
    w.add_vision_image_std([float(x) for x in v.std])
    if plan.use_gelu:
        w.add_vision_use_gelu(True)
    if plan.scale_factor is not None:
        w.add_vision_projector_scale_factor(plan.scale_factor)
    if plan.feature_layer is not None:
        w.add_array(KEY_FEATURE_LAYER, [plan.feature_layer])
    spec_json, spec_sha = spec_digest(spec)
    w.add_string(GgufKeys.VERSION, omnic.__version__)
    w.add_string(GgufKeys.SPEC_SHA256, spec_sha)
    w.add_string(GgufKeys.SPEC, spec_json)

    # streamed like gguf_write: infos first, then one tensor at a time
    order = [(ours, names[ours]) for ours in state]
    types = {g: _stored_type(g, state[o].dim(), file_type) for o, g in order}
    for ours, g in order:
        shape = tuple(state[ours].shape)
        dtype = np.float16 if types[g] == "F16" else np.float32
        w.add_tensor_info(g, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for ours, g in order:
        arr = state[ours].detach().to("cpu").float().numpy()
        arr = arr.astype(np.float16) if types[g] == "F16" else arr
        w.write_tensor_data(np.ascontiguousarray(arr))
        counts[types[g]] = counts.get(types[g], 0) + 1
        nbytes[types[g]] = nbytes.get(types[g], 0) + arr.nbytes
    w.close()
    return {"projector_type": plan.projector_type, "tensor_types": dict(sorted(counts.items())),
            "bytes_by_type": dict(sorted(nbytes.items())), "tensors": len(order)}


def lower_mmproj(program: "Program", out_dir: Path, text_model: str, decoder_file_type: str
                 ) -> "Artifact":
    """Write `mmproj-<name>-<F32|F16>.gguf` beside the decoder; return its Artifact."""
    from omnic.targets.base import Artifact
    from omnic.targets.components import signature

    spec = program.spec
    component = program.components[Components.VISION_ENCODER]
    file_type = mmproj_file_type(decoder_file_type)
    out_dir = Path(out_dir)
    filename = f"mmproj-{spec.name}-{file_type}.gguf"
    t0 = time.perf_counter()
    facts = write_mmproj(out_dir / filename, spec, component, file_type)
    nbytes = (out_dir / filename).stat().st_size
    v = spec.modalities.vision
    logging.getLogger(__name__).info(
        f"gguf: mmproj {facts['projector_type']} {file_type} -> {filename} "
        f"({nbytes / 2**20:.1f} MiB, {v.n_tokens} image tokens, {time.perf_counter() - t0:.1f} s)")
    usage = (f"llama-mtmd-cli -m {text_model} --mmproj {filename} --image IMG.png; images of "
             f"{v.image_size}x{v.image_size} give omnic's {v.n_tokens} tokens")
    if facts["projector_type"] == "lfm2" and not LFM2_TOKENS[0] <= v.n_tokens <= LFM2_TOKENS[1]:
        usage += (f" only with --image-min-tokens {v.n_tokens} --image-max-tokens {v.n_tokens} "
                  f"(llama.cpp's lfm2 preprocessing otherwise resizes to {LFM2_TOKENS[0]}-"
                  f"{LFM2_TOKENS[1]} tokens)")
    rel = Path(out_dir.name) / filename if out_dir.name == Targets.GGUF else Path(filename)
    return Artifact(
        component=component.name, target=Targets.GGUF, path=str(rel),
        signature=signature(component),
        quantization={"weights": file_type, "tensor_types": facts["tensor_types"],
                      "bytes_by_type": facts["bytes_by_type"]},
        details={
            "format": "llama.cpp mmproj (general.architecture clip)",
            "projector_type": facts["projector_type"],
            "file_type": file_type,
            "text_model": text_model,  # the decoder GGUF mtmd loads it beside
            "bytes": nbytes,
            "tensors": facts["tensors"],
            "image_tokens": v.n_tokens,
            "projector_gelu": "erf in omnic, tanh in llama.cpp (max |diff| 4.7e-4 per "
                              "activation, below ggml's fp16-table GELU rounding)",
            "golden_input": "float pixel values written into clip's inp_raw (mtmd eval callback)",
            "flash_attention": "disabled in the golden run (f32 K/V)",
            "usage": usage,
        },
        precision=f"mmproj_{file_type.lower()}",
    )


# --- running it ---------------------------------------------------------------------------------
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
    """llama.cpp's and mtmd/clip's log records instead of stderr: gguf_runtime's capture, with
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
    text = artifact_file(build_dir, str(Path(artifact.path).parent / artifact.details["text_model"]))
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
