"""llama.cpp's `mmproj` file: the spec's vision encoder (tower + projector) beside the decoder GGUF.

llama.cpp keeps encoders out of the text model: `llama-mtmd-cli -m text.gguf --mmproj mmproj.gguf`
loads a second GGUF (architecture "clip", `clip.*` keys, `v.*` / `mm.*` tensors) with libmtmd.
omnic writes one when llama.cpp's clip graphs compute exactly what omnic's vision encoder does:

    omnic vision encoder                  llama.cpp (clip.projector_type, graph)
    siglip/vit tower + mlp                "mlp"   llava graph, clip.vision.feature_layer = n_layers
    siglip/vit tower + pixel_shuffle_mlp  "lfm2"  siglip graph: patch merge (Idefics3 order) + mm.1,
                                                  GELU, mm.2

The tower is the same in both: patch conv (+bias), learned positions, pre-LayerNorm blocks with
biased q/k/v/o and up/down, a final LayerNorm, tower activation gelu_tanh (`clip.use_gelu`) or
quick_gelu (clip's default). Everything else is a pre-flight problem naming the field and the
nearest choice llama.cpp has (`mmproj_problems`): exact-erf GELU in the tower, the CLIP class
token (see _CLASS_TOKEN), mean pooling, a linear projector, audio, sensors and the action head.

One documented approximation: omnic's projector GELU is exact (erf, as LLaVA's nn.GELU), llama.cpp
runs its tanh form there. The two differ by at most 4.7e-4 per activation, below the rounding of
ggml's own CPU GELU (an fp16 lookup table: up to 2e-3 for |x| < 3, ggml-cpu/vec.h GGML_GELU_FP16),
so the golden check cannot tell them apart and the projector has no spec field to choose.

Golden: mmproj_runtime.py runs the file with libmtmd (`MmprojRunner`) on exactly the float
pixels the PyTorch reference sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.constants import Components, GgufKeys, Targets
from omnic.targets.base import Problem

if TYPE_CHECKING:
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


def write_mmproj(path: Path, spec: "ResolvedSpec", component: "Component", file_type: str,
                 spec_dir: Path) -> dict[str, Any]:
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
    spec_json, spec_sha = spec_digest(spec, spec_dir)
    w.add_string(GgufKeys.VERSION, omnic.__version__)
    w.add_string(GgufKeys.SPEC_SHA256, spec_sha)
    w.add_string(GgufKeys.SPEC, spec_json)

    # streamed like write.py: infos first, then one tensor at a time
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
    facts = write_mmproj(out_dir / filename, spec, component, file_type, program.spec_dir)
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
