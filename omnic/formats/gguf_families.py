"""Spec -> llama.cpp architecture: which `general.architecture` carries a model, and what no
architecture can express (torch-free, gguf-free: the GGUF target's pre-flight).

Every rule below was read in llama.cpp's own sources (the llama-cpp-python 0.3.36 vendored copy:
src/models/<arch>.cpp for the graph and the keys each loader reads, src/llama-model.cpp for the
shared keys and `llama_model_rope_type`), not guessed. Per architecture:

- `llama`, `qwen2`, `qwen3`, `qwen3moe`, `deepseek`, `gemma`, `gemma2`, `granite_swa`: see
  omnic.formats.gguf_arch.
- `gemma3`   ref: src/models/gemma3.cpp - gemma2's sandwich without soft-capped attention, per-head
  q/k RMSNorm (stored +1 like every Gemma norm), embeddings scaled by sqrt(d_model), a fixed score
  scale (1/sqrt(head_dim); d_model/n_heads for the 62-layer 27B), optional final soft-cap. Sliding
  layers are the `sliding_window_pattern` array (default: 5 of every 6) and take their RoPE base
  from `rope.freq_base_swa` (default 10000, whatever `rope.freq_base` is) and `freq_scale_swa`,
  which no key sets (1: unscaled); linear scaling (`rope.scaling.factor`) reaches the global layers
  only - Gemma 3's own scheme. Output tied or not.
- `smollm3`  ref: src/models/smollm3.cpp - llama blocks ("normal" RoPE) with no RoPE on every
  fourth layer: `n_no_rope_layer_step = 4` is hard-coded (no key), so only that NoPE pattern.
- `phi3`     ref: src/models/phi3.cpp - fused `attn_qkv` ([q; k; v] rows) and `ffn_up` ([gate;
  up]: ggml_swiglu activates the first half), NeoX RoPE over `rope.dimension_count` dims (partial
  rotary), LongRoPE as `rope_factors_long`/`rope_factors_short` tensors (the long list once the
  context llama.cpp allocates exceeds `rope.scaling.original_context_length`) with cos/sin scaled
  by `rope.scaling.attn_factor`; n_heads * head_dim == d_model; a sliding window is switched off
  with a load-time warning ("Phi SWA is currently disabled"), so none is written.
- `olmo2`    ref: src/models/olmo2.cpp - no pre-norms: attention and FFN outputs are normed
  before each residual add; q/k RMSNorm over all heads at once ([n_heads*head_dim],
  [n_kv_heads*head_dim]); untied output required; NeoX RoPE. Sliding layers (OLMo 3) use the
  global base unscaled.
- `granite`  ref: src/models/granite.cpp - llama blocks with `embedding_scale`, `residual_scale`,
  `attention.scale` and `logit_scale` (logits divided; required), optional `rope_freqs`.
- `lfm2`     ref: src/models/lfm2.cpp - LFM2's hybrid: a layer whose `head_count_kv` entry is 0
  is a gated short convolution (`shortconv.*`, kernel `shortconv.l_cache`), the others attention
  with per-head q/k RMSNorm, NeoX RoPE, wo fixed to [n_embd, n_embd] (square) and no biases;
  SwiGLU FFN, RMSNorm before both; output optional (tied or not); no MoE (that is `lfm2moe`).
  Its sliding window (read when > 0) covers every attention layer, which omnic's per-layer table
  does not map: refused, as NoPE layers are.
- `granitehybrid` ref: src/models/granite-hybrid.cpp, src/models/mamba-base.cpp
  (build_mamba2_layer), conversion/granite.py (GraniteHybridModel) - Granite 4.0-H: a layer
  whose `head_count_kv` entry is 0 is a Mamba-2 layer (`ssm.*` keys), the others llama
  attention with optional q/k/v biases and "normal" RoPE; `rope.scaling.finetuned` switches RoPE
  on or off for every attention layer at once (off: Granite 4.0-H's NoPE); Granite's four
  scales, each optional; SwiGLU FFN, RMSNorm before both; output optional. The loader asserts
  `2 * n_embd == ssm.inner_size` (an expansion of 2) and the graph adds `ssm_conv1d.bias`
  unconditionally; its MoE variant (Granite 4.0-H tiny/small) is not written here.
- `qwen35` ref: src/models/qwen35.cpp, conversion/qwen.py (Qwen3_5TextModel) - Qwen3.5: the
  layers `attention.recurrent_layers` marks are Gated DeltaNet layers (`ssm.*` keys), the others
  attention whose `attn_q` holds each head's query and sigmoid output gate (the gate is required),
  per-head q/k RMSNorm, no biases, a fixed 1/sqrt(head_dim) score scale, and interleaved M-RoPE
  (IMROPE, NeoX pairs) over `rope.dimension_count` dims; SwiGLU FFN, RMSNorm before both (the
  pre-FFN one is `post_attention_norm`); output optional. The loader sizes the key and the
  value heads alike (ssm.state_size: head_k_dim = head_v_dim). Text tokens get M-RoPE positions
  [p, p, p, 0] (llama-graph.cpp), so `rope.dimension_sections` must send every rotated pair to
  one of the first three sections (omnic writes [ceil(n/3), round(n/3), floor(n/3), 0] for n
  rotated pairs: Qwen3.5's [11, 11, 10, 0]; the converter's fixed default trips
  GGML_ASSERT(sum(sections) <= head_dim) on heads under 32 dims). RoPE scaling is not written
  (untried with M-RoPE sections); its MoE variant (`qwen35moe`) is not written here.

What none of them can express is an ArchProblem naming the spec field (the target's pre-flight
reports each before any work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from omnic.spec.layers import STATE_KINDS

if TYPE_CHECKING:
    from omnic.spec import Model
    from omnic.spec.layers import LayerRope

# Architectures whose RoPE rotates consecutive pairs (LLAMA_ROPE_TYPE_NORM in llama-model.cpp
# `llama_model_rope_type`); omnic weights are in the HF rotate-half layout and get permuted.
NORM_ROPE_ARCHS = frozenset({"llama", "deepseek", "granite", "granite_swa", "smollm3",
                             "granitehybrid"})
# Architectures that load the optional `rope_freqs` tensor (llama3 scaling), per src/models/*.cpp.
ROPE_FREQS_ARCHS = frozenset({"llama", "granite", "granite_swa", "granitehybrid"})
# convert_hf_to_gguf stores Gemma's unit-offset norms as (1 + w) (conversion/gemma.py).
UNIT_OFFSET_ARCHS = frozenset({"gemma", "gemma2", "gemma3"})
# Files whose norms convert_hf_to_gguf stores as (1 + w): Gemma's and Qwen3.5's (conversion/
# qwen.py: every norm but the DeltaNet's gated one), read back with the offset removed.
OFFSET_NORM_ARCHS = UNIT_OFFSET_ARCHS | {"qwen35"}
# Fused attn_qkv / ffn_up (convert_hf_to_gguf keeps Phi-3's qkv_proj and gate_up_proj as they are).
FUSED_ARCHS = frozenset({"phi3"})
SMOLLM3_NOPE_STEP = 4  # src/models/smollm3.cpp: (il + 1) % 4 == 0 has no RoPE
GEMMA3_SWA_PERIOD = 6  # src/models/gemma3.cpp: load_swa_pattern(ml, 6) without the array key
# Soft-cap written when a gemma2-arch spec has none: llama.cpp's gemma2 graph always applies
# tanh(x / c) * c; with c = 1e6 that is x to within float32 rounding for |x| < 1e3.
NO_SOFTCAP = 1.0e6

# llama.cpp pads every context (and each KV cache) to a multiple of 256 cells
# ref: src/llama-context.cpp (GGML_PAD(cparams.n_ctx, 256)), src/llama-kv-cache-iswa.cpp
LLAMA_CPP_CTX_PAD = 256


@dataclass(frozen=True)
class ArchPlan:
    """How one spec is written for llama.cpp."""

    arch: str  # general.architecture
    permute_qk: bool  # rows of Q/K (and their biases) interleaved for "normal" RoPE
    norm_offset: float  # 1.0: unit-offset norms are stored as (1 + w), as llama.cpp applies x * w
    swa_pattern: tuple[bool, ...] | None = None  # per layer: sliding window or not
    fused: bool = False  # phi3: attn_qkv = [q; k; v], ffn_up = [gate; up]


class ArchProblem(NamedTuple):
    """Why a spec has no llama.cpp architecture: the field to change and the reason (the GGUF
    target reports each as its Problem)."""

    field: str
    message: str


def file_layout(arch: str) -> ArchPlan:
    """The tensor layout of a GGUF file of architecture `arch` (what the importer reads with)."""
    return ArchPlan(arch, arch in NORM_ROPE_ARCHS, 1.0 if arch in OFFSET_NORM_ARCHS else 0.0,
                    None, arch in FUSED_ARCHS)


class Layers(NamedTuple):
    """The per-layer table as llama.cpp sees it."""

    sliding: tuple[bool, ...]  # attention == "sliding"
    window: int | None  # the one window of the sliding layers
    slides: bool  # some layer's window is shorter than the context (the window does something)
    nope: tuple[bool, ...]  # attention without RoPE (a state row is no attention)
    conv: tuple[bool, ...]  # LFM2's short convolution: no attention, no KV cache
    ssm: tuple[bool, ...]  # Granite 4's mamba2: no attention, no KV cache
    deltanet: tuple[bool, ...]  # Qwen3.5's gated_deltanet: no attention, no KV cache
    full: "LayerRope | None"  # the one RoPE of the full-attention layers that have one
    local: "LayerRope | None"  # the one RoPE of the sliding layers that have one

    @property
    def main(self) -> "LayerRope | None":
        """The RoPE written as `rope.*` (the global layers', else the sliding layers')."""
        return self.full or self.local


def layers_of(model: "Model") -> Layers:
    """Summarise `model.table`. The table follows `sliding_window` and `rope` (spec/layers.py),
    so it has one window size and one RoPE per attention kind, as llama.cpp's single-valued keys
    want."""
    table = model.table
    window = next((r.window for r in table if r.window is not None), None)
    full = next((r.rope for r in table if r.attention == "full" and r.rope), None)
    local = next((r.rope for r in table if r.attention == "sliding" and r.rope), None)
    return Layers(
        sliding=tuple(r.attention == "sliding" for r in table), window=window,
        slides=window is not None and window < model.context_length,
        nope=tuple(r.rope is None and r.attention not in STATE_KINDS for r in table),
        conv=tuple(r.attention == "short_conv" for r in table),
        ssm=tuple(r.attention == "mamba2" for r in table),
        deltanet=tuple(r.attention == "gated_deltanet" for r in table), full=full, local=local)


@dataclass(frozen=True)
class _Caps:
    """What one llama.cpp architecture can carry (read in its src/models/<arch>.cpp)."""

    ffn: str = "swiglu"
    post_norms: bool = False  # norms after attention and after the FFN (required tensors)
    qk_norm: str | None = None  # "head" | "full": the width of the q/k norm tensors
    qkv_bias: bool = False
    tied: bool | None = None  # True: output from token_embd only; False: output.weight required
    moe: bool = False
    square: bool = False  # n_heads * head_dim == d_model (q/o shapes fixed to n_embd)
    swa: bool = False  # sliding-window layers (an iSWA KV cache)
    local_theta: bool = False  # sliding layers may have their own base (rope.freq_base_swa)
    local_unscaled: bool = False  # sliding layers are never scaled (else: scaled like the rest)
    nope: str = "none"  # "none" | "step4" (smollm3) | "any" (the rope_pattern array)
    #                     | "all" (granitehybrid: one switch for every attention layer)
    scales: bool = False  # granite's embedding/residual/attention/logit scales
    partial: bool = False  # rope.dimension_count < head_dim
    scalings: frozenset[str] = field(default_factory=lambda: frozenset({"linear", "yarn"}))
    softcaps: tuple[str, ...] = ()


_LLAMA3 = frozenset({"linear", "yarn", "llama3"})
CAPS = {
    "llama": _Caps(qkv_bias=True, moe=True, scalings=_LLAMA3),
    "qwen2": _Caps(qkv_bias=True, square=True),
    "qwen3": _Caps(qk_norm="head", qkv_bias=True),
    "qwen3moe": _Caps(qk_norm="head", moe=True),
    "deepseek": _Caps(moe=True, square=True),
    "gemma": _Caps(ffn="geglu", tied=True),
    "gemma2": _Caps(ffn="geglu", post_norms=True, tied=True, swa=True, local_theta=True,
                    softcaps=("attn_softcap", "final_softcap")),
    "gemma3": _Caps(ffn="geglu", post_norms=True, qk_norm="head", swa=True, local_theta=True,
                    local_unscaled=True, scalings=frozenset({"linear"}),
                    softcaps=("final_softcap",)),
    "olmo2": _Caps(post_norms=True, qk_norm="full", tied=False, square=True, swa=True,
                   local_unscaled=True),
    "phi3": _Caps(square=True, partial=True, scalings=frozenset({"linear", "longrope"})),
    "smollm3": _Caps(qkv_bias=True, nope="step4"),
    "granite": _Caps(qkv_bias=True, scales=True, scalings=_LLAMA3),
    "granite_swa": _Caps(qkv_bias=True, moe=True, swa=True, nope="any", scales=True,
                         scalings=_LLAMA3),
    "lfm2": _Caps(qk_norm="head", square=True),
    "granitehybrid": _Caps(qkv_bias=True, nope="all", scales=True, scalings=_LLAMA3),
    "qwen35": _Caps(qk_norm="head", partial=True, scalings=frozenset()),
}
_GRANITE_FIELDS = ("embedding_multiplier", "residual_multiplier", "logits_scaling")


def _choose(model: "Model", lay: Layers) -> str:
    """The architecture whose blocks are the spec's (its problems are checked afterwards)."""
    moe, hd = model.moe, model.dim_per_head
    if any(lay.deltanet):
        return "qwen35"  # the one architecture with Gated DeltaNet layers written here
    if any(lay.ssm):
        return "granitehybrid"  # the one architecture with Mamba-2 layers written here
    if any(lay.conv):
        return "lfm2"  # the one architecture with short-convolution layers
    if not model.pre_norms:
        return "olmo2"
    if model.post_norms or model.scale_embeddings:
        return "gemma3" if model.qk_norm else "gemma2" if model.post_norms else "gemma"
    ropes = [r for r in (lay.full, lay.local) if r is not None]
    if any(r.dims < hd or (r.scaling and r.scaling.kind == "longrope") for r in ropes):
        return "phi3"
    if moe is not None:
        if model.qk_norm:
            return "qwen3moe"
        if moe.shared_experts or not moe.normalize_top_k:
            return "deepseek"
        return "granite_swa" if lay.slides else "llama"
    if model.qk_norm:
        return "qwen3"
    if any(lay.nope) and not lay.slides:
        return "smollm3"
    if lay.slides:
        return "granite_swa"  # llama blocks with a per-layer sliding window
    scaled = model.attn_scale is not None and not _approx(model.attn_scale, hd**-0.5)
    if scaled or any(getattr(model, f) is not None for f in _GRANITE_FIELDS):
        return "granite"
    if model.qkv_bias and hd * model.n_heads == model.d_model:
        return "qwen2"  # qwen2 wants square q/o projections; llama takes the biases too
    return "llama"


def _approx(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def uses_swa(arch: str, lay: Layers) -> bool:
    """Whether the file marks sliding layers (`sliding_window` + its per-layer pattern): when a
    window is shorter than the context, and when a window >= context still gives those layers
    their own RoPE (gemma3 whenever layers slide: its local default base is 10000)."""
    if arch == "gemma3":
        return any(lay.sliding)
    own = lay.local is not None and lay.full is not None and lay.local.theta != lay.full.theta
    return CAPS[arch].swa and (lay.slides or (arch == "gemma2" and own))


def fixed_scale(model: "Model", arch: str) -> float:
    """The attention score scale llama.cpp's `arch` hard-codes."""
    hd = model.dim_per_head
    # ref: src/models/gemma2.cpp, gemma3.cpp - d_model / n_heads for the 27B shapes
    if (arch, model.n_layers) in (("gemma2", 46), ("gemma3", 62)):
        return (model.d_model / model.n_heads) ** -0.5
    return hd**-0.5


def plan_arch(model: "Model") -> tuple[ArchPlan | None, list[ArchProblem]]:
    """The llama.cpp architecture for `model`, or the reasons there is none.

    Returns:
        (plan, problems): plan is None when problems is not empty.
    """
    problems: list[ArchProblem] = []
    lay = layers_of(model)
    arch = _choose(model, lay)
    problems += _block_problems(model, arch)
    problems += _layer_problems(model, lay, arch)
    problems += _state_problems(model, lay, arch)
    if problems:
        return None, problems
    swa = lay.sliding if uses_swa(arch, lay) else None
    return ArchPlan(arch, arch in NORM_ROPE_ARCHS, 1.0 if model.norm.unit_offset else 0.0, swa,
                    arch in FUSED_ARCHS), []


def _block_problems(model: "Model", arch: str) -> list[ArchProblem]:
    """What the blocks need that `arch` lacks (norms, FFN, heads, biases, scales, experts)."""
    caps, moe, hd = CAPS[arch], model.moe, model.dim_per_head
    out: list[ArchProblem] = []

    def no(field: str, message: str) -> None:
        out.append(ArchProblem(field, f"llama.cpp's {arch} {message}"))

    if not model.pre_norms and arch != "olmo2":
        no("model.pre_norms", "norms the input of attention and of the FFN (pre_norms: true)")
    if model.norm.kind != "rmsnorm":
        no("model.norm.kind", "uses RMSNorm; layernorm blocks have no GGUF architecture here")
    if model.ffn.kind == "gelu":
        no("model.ffn.kind", "has no ungated GELU FFN (llama/qwen use SwiGLU, gemma GeGLU)")
    elif model.ffn.kind != caps.ffn:
        no("model.ffn.kind", f"uses {'GeGLU' if caps.ffn == 'geglu' else 'SwiGLU'}")
    if model.post_norms != caps.post_norms:
        no("model.post_norms", "has post-attention and post-FFN norms" if caps.post_norms
           else "has no norms after attention and the FFN (gemma2, gemma3 and olmo2 have)")
    if arch in UNIT_OFFSET_ARCHS and not model.scale_embeddings:
        no("model.scale_embeddings", "always scales embeddings by sqrt(d_model); set "
           "scale_embeddings: true")
    if arch in ("lfm2", "granitehybrid", "qwen35") and model.scale_embeddings:  # chosen first
        no("model.scale_embeddings", "does not scale its embeddings")
    if caps.tied is True and not model.tie_embeddings:
        no("model.tie_embeddings", "reads the output projection from token_embd (tied "
           "embeddings only)")
    if caps.tied is False and model.tie_embeddings:
        no("model.tie_embeddings", "requires its own output.weight (untied embeddings only)")
    if model.qk_norm and caps.qk_norm is None:
        no("model.qk_norm", "has no q/k norms (qwen3, gemma3 and olmo2 have)")
    elif model.qk_norm and model.qk_norm_width != caps.qk_norm:
        over = "each head" if caps.qk_norm == "head" else "all heads at once"
        no("model.qk_norm_width", f"norms q and k over {over} (qk_norm_width: {caps.qk_norm})")
    elif caps.qk_norm and not model.qk_norm:
        no("model.qk_norm", "requires q/k norms (attn_q_norm/attn_k_norm)")
    if model.qkv_bias and not caps.qkv_bias:
        no("model.qkv_bias", "has no q/k/v biases")
    if moe is not None and not caps.moe:
        no("model.moe", "has no experts" + {
            "lfm2": " (LFM2's experts are llama.cpp's lfm2moe, not written here)",
            "granitehybrid": " here (Granite 4.0-H's MoE variants are not written yet)",
            "qwen35": " (Qwen3.5's experts are llama.cpp's qwen35moe, not written here)"}.get(
                arch, ""))
    if model.attn_output_gate and arch != "qwen35":
        no("model.attn_output_gate", "has no attention output gate (Qwen3.5's is llama.cpp's "
           "qwen35, a hybrid with gated_deltanet layers)")
    if caps.square and hd * model.n_heads != model.d_model:
        no("model.head_dim", f"wants head_dim * n_heads == d_model ({hd} * {model.n_heads} != "
           f"{model.d_model})")
    for cap in ("attn_softcap", "final_softcap"):
        if getattr(model, cap) is not None and cap not in caps.softcaps:
            no(f"model.{cap}", "has no such soft-cap (gemma2 has both, gemma3 the final one)")
    if not caps.scales:
        for f in _GRANITE_FIELDS:
            if getattr(model, f) is not None:
                no(f"model.{f}", "has no such scale (granite's embedding/residual/logit scales)")
        scale = fixed_scale(model, arch)
        if model.attn_scale is not None and not _approx(model.attn_scale, scale):
            no("model.attn_scale", f"uses a fixed score scale {scale:.6g} here; "
               f"{model.attn_scale:.6g} cannot be set")
    if moe is not None and arch == "qwen3moe" and (moe.shared_experts or not moe.normalize_top_k):
        no("model.moe", "renormalises the top-k weights and has no shared experts")
    if moe is not None and arch == "deepseek":
        if not moe.shared_experts or moe.normalize_top_k:
            no("model.moe", "pairs shared experts with un-normalised top-k weights: shared "
               "experts need normalize_top_k: false and un-normalised top-k needs shared experts "
               "(llama/mixtral renormalise)")
        if (moe.shared_hidden or model.ffn.hidden) != model.ffn.hidden:
            no("model.moe.shared_hidden", "sizes shared experts as ffn.hidden * shared_experts")
    return out


def _state_problems(model: "Model", lay: Layers, arch: str) -> list[ArchProblem]:
    """What the layers with a fixed-size state need that `arch` lacks."""
    out: list[ArchProblem] = []
    if arch != "lfm2" and any(lay.conv):
        out.append(ArchProblem("model.layer_pattern", f"llama.cpp's {arch} has no short_conv "
                               "layers (LFM2's are llama.cpp's lfm2, which has no mamba2 layers)"))
    if arch == "qwen35" and any(lay.ssm):
        out.append(ArchProblem("model.layer_pattern", "llama.cpp's qwen35 has no mamba2 layers "
                               "beside its gated_deltanet ones"))
    g = model.gated_deltanet
    if arch == "qwen35" and g is not None:
        if g.key_dim != g.value_dim:
            # ref: src/models/qwen35.cpp - head_k_dim = head_v_dim = ssm_d_state (ssm_norm and
            # the state [head_v_dim, head_v_dim] are sized by it)
            out.append(ArchProblem("model.gated_deltanet.value_dim", "llama.cpp's qwen35 sizes "
                                   "key and value heads alike (ssm.state_size): key_dim "
                                   f"{g.key_dim} != value_dim {g.value_dim}"))
        if not model.attn_output_gate and not all(lay.deltanet):
            # ref: qwen35.cpp - attn_q is [n_embd, n_embd_head_k * n_head * 2]: query and gate
            out.append(ArchProblem("model.attn_output_gate", "llama.cpp's qwen35 reads each "
                                   "head's query and output gate from one attn_q (the gate is "
                                   "required): attention without it cannot be written"))
    m = model.mamba2
    if arch == "granitehybrid" and m is not None:
        if m.inner != 2 * model.d_model:
            # ref: src/models/granite-hybrid.cpp "only an expansion factor of 2 is supported"
            out.append(ArchProblem("model.mamba2.head_dim", "llama.cpp's granitehybrid "
                                   "asserts an inner width of 2 * d_model (GGML_ASSERT(2 * n_embd "
                                   f"== d_inner)): heads * head_dim = {m.heads} * {m.head_dim} "
                                   f"!= {2 * model.d_model}"))
        if not m.conv_bias:
            # ref: src/models/mamba-base.cpp adds ssm_conv1d_b whether it was loaded or not
            out.append(ArchProblem("model.mamba2.conv_bias", "llama.cpp's granitehybrid adds "
                                   "the convolution's bias (ssm_conv1d.bias) unconditionally; "
                                   "a convolution without one cannot be loaded"))
    return out


def _layer_problems(model: "Model", lay: Layers, arch: str) -> list[ArchProblem]:
    """What the per-layer table needs that `arch` lacks (windows, NoPE, RoPE per layer kind)."""
    caps, hd, ctx = CAPS[arch], model.dim_per_head, model.context_length
    out: list[ArchProblem] = []

    def no(field: str, message: str) -> None:
        out.append(ArchProblem(field, f"llama.cpp's {arch} {message}"))

    if lay.slides and not caps.swa:
        why = ("switches its sliding window off with a warning (src/models/phi3.cpp)"
               if arch == "phi3" else "has no sliding-window attention")
        no("model.sliding_window", f"{why}; window {lay.window} < context_length {ctx} would "
           "attend too far (use a window >= context_length or a shorter context)")
    if any(lay.nope):
        step = tuple((i + 1) % SMOLLM3_NOPE_STEP == 0 for i in range(model.n_layers))
        if caps.nope == "none":
            no("model.layer_pattern", "has RoPE on every layer; NoPE layers need smollm3 (every "
               f"{SMOLLM3_NOPE_STEP}th layer) or a sliding window (granite_swa's rope_pattern)")
        elif caps.nope == "step4" and lay.nope != step:
            no("model.layer_pattern", f"drops RoPE on every {SMOLLM3_NOPE_STEP}th layer exactly "
               "(n_no_rope_layer_step, hard-coded): the pattern must be \"3 full : 1 nope\"")
        elif caps.nope == "all" and lay.main is not None:
            no("model.layer_pattern", "switches RoPE on or off for every attention layer at "
               "once (rope.scaling.finetuned): make all attention layers nope, or none")
    full, local, swa = lay.full, lay.local, uses_swa(arch, lay)
    if full is not None and local is not None and full != local:
        if full.dims != local.dims:
            no("model.layers", "rotates the same number of dims on every layer")
        if full.theta != local.theta and not (caps.local_theta and swa):
            no("model.rope.sliding", f"has one RoPE base for every layer here ({full.theta:g} "
               f"vs {local.theta:g} on the sliding layers)")
        if full.scaling != local.scaling and not (caps.local_unscaled and swa):
            no("model.rope.sliding", "scales every layer's RoPE alike here")
    if caps.local_unscaled and swa and local is not None and local.scaling is not None:
        no("model.rope.sliding", "never scales the sliding layers' RoPE; set rope.sliding: "
           "{theta: ..., scaling: null}")
    rope = lay.main
    if rope is None:
        return out
    if rope.dims < hd and not caps.partial:
        no("model.rope.rotary_dim", f"rotates the whole head ({hd} dims), not {rope.dims} "
           "(partial rotary needs phi3)")
    rs = rope.scaling
    if rs is not None and rs.kind not in caps.scalings:
        why = {"llama3": "loads no rope_freqs tensor (llama3 scaling); llama/granite do",
               "longrope": "has no rope_factors_long/short (LongRoPE needs phi3)"}
        no("model.rope.scaling", why.get(rs.kind, f"has no {rs.kind} RoPE scaling here"))
    if rs is not None and rs.kind == "yarn" and (rs.beta_fast != 32.0 or rs.beta_slow != 1.0):
        no("model.rope.scaling", "reads no YaRN beta keys; only beta_fast 32 / beta_slow 1 are "
           "expressible")
    if rs is not None and rs.kind == "longrope":
        # llama.cpp picks the long factors when the context it allocates (padded to 256,
        # llama-context.cpp) exceeds the original; omnic picks them by context_length
        pad = LLAMA_CPP_CTX_PAD
        padded, original = -(-ctx // pad) * pad, rs.original_context_length
        if (ctx > original) != (padded > original):
            fits = [f"at most {original // pad * pad}"] if original >= pad else []
            no("model.context_length", f"pads the context to {padded} and would switch to the "
               f"long LongRoPE factors (original {original}); use a context_length "
               f"{' or '.join([*fits, f'above {original}'])}")
    return out
