"""Import a Hugging Face checkpoint directory as an omnic spec (`omnic import HF_DIR -o spec.yaml`).

Only `config.json` is read here (torch-free); the weights stay in the directory and are loaded by
the builder through `omnic.importers.hf_weights`. Every config field that changes the network is
either translated or rejected with an error naming it: an import never silently drops a feature.
Defaults for absent fields are those of the transformers configuration class of each family.
ref: https://github.com/huggingface/transformers/tree/main/src/transformers/models
(configuration_*.py)
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable

from omnic.importers import hf_granite4, hf_lfm2, hf_qwen35
from omnic.spec.layers import pattern_kinds


class UnsupportedModel(ValueError):
    """The checkpoint uses an architecture or a config feature omnic cannot express."""


# architecture -> (family, per-family defaults of transformers' config classes)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "LlamaForCausalLM": ("llama", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-6}),
    "MistralForCausalLM": ("mistral", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                       "rms_norm_eps": 1e-6}),
    "Qwen2ForCausalLM": ("qwen2", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-6}),
    "Qwen3ForCausalLM": ("qwen3", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-6, "head_dim": 128}),
    "Qwen3MoeForCausalLM": ("qwen3_moe", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                          "rms_norm_eps": 1e-6, "num_experts_per_tok": 8,
                                          "norm_topk_prob": False}),
    "GemmaForCausalLM": ("gemma", {"tie_word_embeddings": True, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-6, "head_dim": 256}),
    "Gemma2ForCausalLM": ("gemma2", {"tie_word_embeddings": True, "rope_theta": 10000.0,
                                     "rms_norm_eps": 1e-6, "head_dim": 256,
                                     "query_pre_attn_scalar": 256,
                                     "attn_logit_softcapping": 50.0,
                                     "final_logit_softcapping": 30.0,
                                     "sliding_window": 4096}),
    "Gemma3ForCausalLM": ("gemma3", {"tie_word_embeddings": True, "rope_theta": 1e6,
                                     "rope_local_base_freq": 10000.0, "rms_norm_eps": 1e-6,
                                     "head_dim": 256, "query_pre_attn_scalar": 256,
                                     "sliding_window": 4096, "sliding_window_pattern": 6}),
    "SmolLM3ForCausalLM": ("smollm3", {"tie_word_embeddings": True, "rope_theta": 2e6,
                                       "rms_norm_eps": 1e-6, "no_rope_layer_interval": 4}),
    # Phi3Config always has original_max_position_embeddings (4096), which transformers prefers
    # to the one inside rope_scaling (modeling_rope_utils.standardize_rope_params)
    "Phi3ForCausalLM": ("phi3", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                 "rms_norm_eps": 1e-5,
                                 "original_max_position_embeddings": 4096}),
    "MixtralForCausalLM": ("mixtral", {"tie_word_embeddings": False, "rope_theta": 1e6,
                                       "rms_norm_eps": 1e-5}),
    "Olmo2ForCausalLM": ("olmo2", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-5}),
    "GraniteForCausalLM": ("granite", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                       "rms_norm_eps": 1e-6, "embedding_multiplier": 1.0,
                                       "residual_multiplier": 1.0, "logits_scaling": 1.0,
                                       "attention_multiplier": 1.0}),
    "Lfm2ForCausalLM": ("lfm2", hf_lfm2.DEFAULTS),
    "GraniteMoeHybridForCausalLM": ("granite4", hf_granite4.DEFAULTS),
    **{arch: ("qwen3_5", hf_qwen35.DEFAULTS) for arch in hf_qwen35.ARCHS},
}

_NORM_EPS = {"lfm2": "norm_eps"}  # the families that name rms_norm_eps otherwise
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


def read_config(hf_dir: Path) -> dict[str, Any]:
    """config.json of a Hugging Face directory (UnsupportedModel when absent or unreadable)."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UnsupportedModel(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UnsupportedModel(f"{path}: not valid JSON: {err}") from None


def family_of(config: dict[str, Any]) -> tuple[str, str]:
    """(architecture, family) of a config; UnsupportedModel for anything else."""
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return arch, FAMILIES[arch][0]
    named = ", ".join(archs) or f"model_type={config.get('model_type')!r} with no architectures"
    raise UnsupportedModel(
        f"unsupported architecture {named}; omnic imports {', '.join(sorted(FAMILIES))}"
    )


class _Config:
    """Raw config.json values with the family's defaults and a record of what was read."""

    def __init__(self, raw: dict[str, Any], arch: str) -> None:
        self.raw, self.arch = raw, arch
        self.family, self.defaults = FAMILIES[arch]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        if value is None:
            value = self.defaults.get(key, default)
        return value

    def given(self, key: str) -> Any:
        """The value of config.json, even an explicit null; the family's default when absent."""
        return self.raw[key] if key in self.raw else self.defaults.get(key)

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise UnsupportedModel(f"{self.arch}: config.json has no {key!r}")
        return value

    def reject(self, key: str, ok: Callable[[Any], bool], why: str) -> None:
        value = self.raw.get(key)
        if value is not None and not ok(value):
            raise UnsupportedModel(f"{self.arch}: {key}={value!r} is not supported: {why}")


# --- RoPE ----------------------------------------------------------------------------------------
_ORIGINAL = "original_max_position_embeddings"


def _scaling(c: _Config, params: dict[str, Any], original: int) -> dict[str, Any] | None:
    """omnic's `rope.scaling` of one transformers rope-parameters dict (None: plain RoPE).
    `original` is the pre-training context transformers uses for it."""
    kind = params.get("rope_type") or params.get("type") or "default"
    if c.family == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"  # Phi3Config's backward-compatible names of longrope
    if kind == "default":
        return None
    if kind == "linear":
        return {"kind": "linear", "factor": float(params["factor"])}
    if kind == "llama3":
        return {"kind": "llama3", "factor": float(params["factor"]),
                "low_freq_factor": float(params["low_freq_factor"]),
                "high_freq_factor": float(params["high_freq_factor"]),
                "original_context_length": int(original)}
    if kind == "yarn":
        for key in ("mscale", "mscale_all_dim"):
            if params.get(key):
                raise UnsupportedModel(f"{c.arch}: yarn with {key} is not supported")
        if params.get("truncate") is False:
            raise UnsupportedModel(f"{c.arch}: yarn with truncate=false is not supported")
        factor = params.get("factor") or c.need("max_position_embeddings") / original
        out = {"kind": "yarn", "factor": float(factor), "original_context_length": int(original)}
        for key in ("beta_fast", "beta_slow", "attention_factor"):
            if params.get(key) is not None:
                out[key] = float(params[key])
        return out
    if kind == "longrope":
        short, long = params.get("short_factor"), params.get("long_factor")
        if not short or not long:
            raise UnsupportedModel(f"{c.arch}: rope type 'longrope' without short_factor and "
                                   "long_factor")
        # ref: modeling_rope_utils._compute_longrope_parameters (factor from the two lengths)
        factor = params.get("factor") or c.need("max_position_embeddings") / original
        out = {"kind": "longrope", "short_factor": [float(x) for x in short],
               "long_factor": [float(x) for x in long], "factor": float(factor),
               "original_context_length": int(original)}
        if params.get("attention_factor") is not None:
            out["attention_factor"] = float(params["attention_factor"])
        return out
    raise UnsupportedModel(f"{c.arch}: rope type {kind!r} is not supported (omnic has default, "
                           "linear, llama3, yarn, longrope)")


def _rotary_dim(c: _Config, params: dict[str, Any], head_dim: int) -> int | None:
    """Rotated dims of a partial rotary (Phi-3, Qwen3.5), None for the whole head."""
    partial = params.get("partial_rotary_factor", c.get("partial_rotary_factor"))
    if partial is None or float(partial) == 1.0:
        return None
    if c.family not in ("phi3", "qwen3_5"):  # the others' apply_rotary_pos_emb rotates it all
        raise UnsupportedModel(f"{c.arch}: partial_rotary_factor={partial} (partial RoPE) is not "
                               "supported")
    return int(head_dim * float(partial))  # Phi3Config.validate_rope's rotary_ndims


def _rope(c: _Config, head_dim: int) -> dict[str, Any]:
    """The spec's `rope` from either layout: `rope_parameters` (transformers >= 5) or
    `rope_theta` + `rope_scaling` (older files); per layer type for Gemma 3."""
    params = dict(c.raw.get("rope_parameters") or {})
    scaling = dict(c.raw.get("rope_scaling") or {})
    if c.family == "gemma3":
        return _rope_by_layer_type(c, params, scaling, head_dim)
    if "full_attention" in params or "sliding_attention" in params:
        raise UnsupportedModel(f"{c.arch}: per-layer-type rope_parameters are not supported")
    merged = {**scaling, **params}
    # standardize_rope_params: a top-level original length wins over the one in the dict
    original = (c.raw.get(_ORIGINAL) or c.defaults.get(_ORIGINAL) or merged.get(_ORIGINAL)
                or c.need("max_position_embeddings"))
    rope: dict[str, Any] = {"theta": float(merged.get("rope_theta") or c.get("rope_theta")),
                            "scaling": _scaling(c, merged, original)}
    dims = _rotary_dim(c, merged, head_dim)
    if dims is not None:
        rope["rotary_dim"] = dims
    return rope


def _rope_by_layer_type(c: _Config, params: dict[str, Any], scaling: dict[str, Any],
                        head_dim: int) -> dict[str, Any]:
    """Gemma 3: `rope_parameters: {full_attention: {...}, sliding_attention: {...}}`, or the older
    `rope_theta` + `rope_local_base_freq` + `rope_scaling` (which scales the full layers only).
    ref: configuration_gemma3.Gemma3TextConfig.convert_rope_params_to_dict"""
    extra = sorted(set(params) - {"full_attention", "sliding_attention"})
    if extra:
        raise UnsupportedModel(f"{c.arch}: rope_parameters keys {extra} (expected one entry per "
                               "layer type: full_attention, sliding_attention)")
    full = {**(params.get("full_attention") or {}), **scaling}
    local = dict(params.get("sliding_attention") or {})
    out = {}
    for name, p, theta_key in (("full", full, "rope_theta"),
                               ("sliding", local, "rope_local_base_freq")):
        _rotary_dim(c, p, head_dim)  # rejects a partial rotary (Phi-3 only)
        original = p.get(_ORIGINAL) or c.need("max_position_embeddings")
        out[name] = {"theta": float(p.get("rope_theta") or c.get(theta_key)),
                     "scaling": _scaling(c, p, original)}
    rope = dict(out["full"])
    if out["sliding"] != out["full"]:
        rope["sliding"] = out["sliding"]
    return rope


# --- which layers differ -------------------------------------------------------------------------
def _layer_types(c: _Config, n_layers: int, window: int | None) -> list[str]:
    """transformers' `layer_types` (or the family's rule when config.json has none)."""
    family = c.family
    if family == "lfm2":
        return [hf_lfm2.KINDS.get(t, t) for t in hf_lfm2.layer_types(c.raw, n_layers)]
    if family in ("granite4", "qwen3_5"):
        return (hf_granite4 if family == "granite4" else hf_qwen35).layer_types(c.raw, n_layers)
    types = c.raw.get("layer_types")
    if types is not None:
        return list(types)
    if family == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if family == "gemma3":  # the older files' sliding_window_pattern: every p-th layer is global
        p = int(c.get("sliding_window_pattern"))
        return ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n_layers)]
    if family in ("qwen2", "qwen3"):
        first = c.raw.get("max_window_layers", 28)
        return ["sliding_attention" if window is not None and i >= first else "full_attention"
                for i in range(n_layers)]
    if family == "smollm3":  # sliding, when enabled, on the NoPE layers (SmolLM3Config)
        return ["sliding_attention" if window is not None and not rope else "full_attention"
                for rope in _rope_layers(c, n_layers)]
    # Mistral, Phi-3, Mixtral, Qwen3-MoE: the window applies to every layer when it is set
    return ["sliding_attention" if window is not None else "full_attention"] * n_layers


def _rope_layers(c: _Config, n_layers: int) -> list[int]:
    """SmolLM3's no_rope_layers: 1 where the layer has RoPE, 0 where it has none (NoPE)."""
    listed = c.raw.get("no_rope_layers")
    if listed is not None:
        return [int(x) for x in listed]
    every = int(c.get("no_rope_layer_interval"))
    return [int((i + 1) % every != 0) for i in range(n_layers)]


def _layer_kinds(c: _Config, n_layers: int) -> tuple[list[str], int | None]:
    """Each layer's omnic kind (full, sliding, nope) and the sliding window."""
    window = c.given("sliding_window")  # an explicit null turns Gemma's windows off
    if c.family in ("qwen2", "qwen3", "qwen3_moe", "smollm3") and not c.raw.get(
            "use_sliding_window", False):
        window = None  # transformers drops the window unless use_sliding_window is true
    types = _layer_types(c, n_layers, window)
    known = ("sliding_attention", "full_attention", *_OMNIC_KINDS)
    unknown = sorted({t for t in types if t not in known})
    if unknown:
        raise UnsupportedModel(f"{c.arch}: layer types {unknown} are not supported")
    if len(types) != n_layers:
        raise UnsupportedModel(f"{c.arch}: layer_types has {len(types)} entries for "
                               f"num_hidden_layers={n_layers}")
    kinds = ["sliding" if t == "sliding_attention" and window is not None else
             t if t in _OMNIC_KINDS else "full" for t in types]
    if c.family == "smollm3":
        rope = _rope_layers(c, n_layers)
        if len(rope) != n_layers:
            raise UnsupportedModel(f"{c.arch}: no_rope_layers has {len(rope)} entries for "
                                   f"num_hidden_layers={n_layers}")
        for i, has_rope in enumerate(rope):
            if not has_rope and kinds[i] == "sliding":
                raise UnsupportedModel(f"{c.arch}: layer {i} slides without RoPE; omnic's layer "
                                       "kinds have no sliding NoPE layer")
            if not has_rope:
                kinds[i] = "nope"
    return kinds, window


# the omnic kinds the families with their own layer types (LFM2, Granite 4, Qwen3.5) give
_OMNIC_KINDS = ("full", "nope", "short_conv", "mamba2", "gated_deltanet")


def compact_pattern(kinds: list[str]) -> str | list[str]:
    """The shortest cycle that repeated from layer 0 gives `kinds`, as a `layer_pattern` string
    ("5 sliding : 1 full", with " ..." when the last repeat is cut short); the list itself when
    nothing repeats."""
    n = len(kinds)
    period = next(p for p in range(1, n + 1) if all(kinds[i] == kinds[i % p] for i in range(n)))
    if period == n:
        return list(kinds)
    groups = [f"{len(list(run))} {kind}" for kind, run in itertools.groupby(kinds[:period])]
    return " : ".join(groups) + (" ..." if n % period else "")


def _layout(kinds: list[str], window: int | None) -> dict[str, Any]:
    """The spec's sliding_window / layer_pattern fields for per-layer `kinds`: the shortcuts
    (all layers, even layers) when they say it, else a pattern."""
    n = len(kinds)
    if set(kinds) == {"full"}:
        return {}
    if set(kinds) == {"sliding"}:
        return {"sliding_window": {"size": int(window), "layers": "all"}}
    if kinds == ["sliding" if i % 2 == 0 else "full" for i in range(n)]:
        return {"sliding_window": {"size": int(window), "layers": "even"}}
    pattern = compact_pattern(kinds)
    assert pattern_kinds(pattern, n) == kinds, (pattern, kinds)
    out: dict[str, Any] = {"layer_pattern": pattern}
    if "sliding" in kinds:
        out["sliding_window"] = {"size": int(window)}
    return out


# --- the model block -----------------------------------------------------------------------------
def _ffn_kind(c: _Config) -> str:
    act = c.raw.get("hidden_activation") or c.raw.get("hidden_act") or (
        "gelu_pytorch_tanh" if c.family.startswith("gemma") else "silu"
    )
    if c.family.startswith("gemma"):
        # transformers maps Gemma's legacy "gelu" to the tanh approximation (configuration_gemma.py)
        if act not in (*_TANH_GELU, "gelu"):
            raise UnsupportedModel(f"{c.arch}: hidden activation {act!r} is not supported")
        return "geglu"
    if act != "silu":
        raise UnsupportedModel(f"{c.arch}: hidden_act={act!r} is not supported "
                               "(SwiGLU needs silu)")
    return "swiglu"


def _moe(c: _Config, model: dict[str, Any]) -> None:
    """Routed experts of Mixtral and Qwen3-MoE (in every layer)."""
    if c.family == "mixtral":
        model["moe"] = {"experts": int(c.need("num_local_experts")),
                        "top_k": int(c.need("num_experts_per_tok")),
                        "normalize_top_k": True}
        return
    # Qwen3MoeConfig saves num_experts under the name num_local_experts (its attribute_map)
    experts = c.raw.get("num_experts", c.raw.get("num_local_experts"))
    if experts is None:
        raise UnsupportedModel(f"{c.arch}: config.json has no 'num_experts'")
    if int(experts) == 0:
        return  # Qwen3MoeDecoderLayer: a dense MLP of intermediate_size in every layer
    c.reject("decoder_sparse_step", lambda v: v == 1,
             "omnic puts the experts in every layer (decoder_sparse_step 1)")
    c.reject("mlp_only_layers", lambda v: not v,
             "omnic has no dense layers between the mixture-of-experts layers")
    model["ffn"]["hidden"] = int(c.need("moe_intermediate_size"))
    model["moe"] = {"experts": int(experts), "top_k": int(c.get("num_experts_per_tok")),
                    "normalize_top_k": bool(c.get("norm_topk_prob"))}


def _family_fields(c: _Config, model: dict[str, Any]) -> None:
    """The fields only some families set."""
    family = c.family
    if family == "qwen2":
        model["qkv_bias"] = True  # hard-wired in Qwen2Attention
    if family in ("qwen3", "qwen3_moe", "gemma3"):
        model["qk_norm"] = True
    if family.startswith("gemma"):
        model["scale_embeddings"] = True
    if family in ("gemma2", "gemma3"):
        if c.raw.get("use_bidirectional_attention"):
            raise UnsupportedModel(f"{c.arch}: use_bidirectional_attention is not supported")
        model["post_norms"] = True  # the sandwich: norms after attention and after the FFN
        model["attn_scale"] = float(c.get("query_pre_attn_scalar")) ** -0.5
        for key, field in (("attn_logit_softcapping", "attn_softcap"),
                           ("final_logit_softcapping", "final_softcap")):
            value = c.given(key)
            if value is not None:
                model[field] = float(value)
    if family == "olmo2":  # norms after attention and the FFN only; q/k norms over all heads
        model.update(pre_norms=False, post_norms=True, qk_norm=True, qk_norm_width="full")
    if family in ("granite", "granite4"):
        for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            if float(c.get(key)) != 1.0:
                model[key] = float(c.get(key))
        model["attn_scale"] = float(c.get("attention_multiplier"))  # the scores' whole scale
    if family in ("mixtral", "qwen3_moe"):
        _moe(c, model)
    if family == "granite4":
        _granite4(c, model)
    if family == "qwen3_5":
        hf_qwen35.fields(c.get, model)
    if family == "lfm2":
        c.reject("conv_bias", lambda v: v is False, "omnic's short_conv has no biases")
        hf_lfm2.fields(c.get, c.given, model)


def _granite4(c: _Config, model: dict[str, Any]) -> None:
    """Granite 4's dense MLP width and Mamba-2 layers (the multipliers are Granite's)."""
    c.reject("num_local_experts", lambda v: int(v) == 0,
             "omnic imports the dense Granite 4 models (num_local_experts 0), not the MoE ones")
    if c.raw.get("num_local_experts") is None:
        raise UnsupportedModel(f"{c.arch}: config.json has no 'num_local_experts' (its default, "
                               "8, makes a mixture of experts omnic does not import)")
    c.reject("mamba_proj_bias", lambda v: v is False, "omnic's mamba2 projections have no bias")
    c.reject("time_step_limit", hf_granite4.unclamped,
             "omnic's mamba2 does not clamp the time step")
    model["ffn"]["hidden"] = int(c.get("shared_intermediate_size"))
    pattern = model.get("layer_pattern")
    if pattern is not None and "mamba2" in pattern:
        model["mamba2"] = hf_granite4.mamba2(c.get, model["d_model"])


def model_from_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, the spec's `model:` block) of a transformers config.json."""
    arch, _ = family_of(config)
    c = _Config(hf_qwen35.text_config(config), arch)
    d, heads = int(c.need("hidden_size")), int(c.need("num_attention_heads"))
    n_layers = int(c.need("num_hidden_layers"))
    head_dim = int(c.raw.get("head_dim") or c.defaults.get("head_dim") or d // heads)

    for key in ("attention_bias", "mlp_bias"):  # o_proj / MLP biases have no omnic tensor
        c.reject(key, lambda v: v is False, "omnic has biases on q, k and v only (qkv_bias)")
    model: dict[str, Any] = {
        "vocab_size": int(c.need("vocab_size")),
        "d_model": d,
        "n_layers": n_layers,
        "n_heads": heads,
        "n_kv_heads": int(c.raw.get("num_key_value_heads") or heads),
        "head_dim": head_dim,
        # LFM2's older name block_ff_dim wins over intermediate_size, as in Lfm2Config
        "ffn": {"kind": _ffn_kind(c),
                "hidden": int(c.raw.get("block_ff_dim") or c.need("intermediate_size"))},
        "norm": {"kind": "rmsnorm", "eps": float(c.get(_NORM_EPS.get(c.family, "rms_norm_eps"))),
                 "unit_offset": c.family.startswith(("gemma", "qwen3_5"))},
        "rope": _rope(c, head_dim),
        "context_length": int(c.need("max_position_embeddings")),
        "tie_embeddings": bool(c.get("tie_word_embeddings")),
    }
    model.update(_layout(*_layer_kinds(c, n_layers)))
    _family_fields(c, model)
    return arch, model


def relative_path(path: Path, start: Path) -> str:
    """`path` relative to the folder `start` when it is inside it (a spec's paths are relative to
    its folder), else absolute: a spec may not reach out of its folder through `..`
    (omnic.spec.extends), e.g. to a GGUF file inside site-packages."""
    path, start = Path(path).resolve(), Path(start).resolve()
    try:
        return path.relative_to(start).as_posix()
    except ValueError:
        return str(path)


def import_hf(hf_dir: Path | str, out: Path | str, context_length: int | None = None,
              name: str | None = None) -> tuple[dict[str, Any], str]:
    """The spec data for the checkpoint in `hf_dir`, with paths relative to the spec `out`, and
    a description of what was read (for the spec's header).

    The spec is written by `omnic.compiler.importing`, which adds the device, quantization and
    targets.

    Args:
        hf_dir: a Hugging Face model directory (config.json, safetensors, tokenizer files).
        out: the spec file to be written; paths inside it are relative to its folder.
        context_length: cap the static KV cache (default: the checkpoint's max_position_embeddings).
        name: the spec's name (default: the directory's name).

    Raises:
        UnsupportedModel: the architecture or a config feature cannot be expressed.
    """
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise UnsupportedModel(f"{hf_dir}: not a directory")
    arch, model = model_from_config(read_config(hf_dir))
    if context_length is not None:
        model["context_length"] = int(context_length)
    rel = relative_path(hf_dir, out.parent)
    has_tokenizer = (hf_dir / "tokenizer.json").is_file()
    spec_name = (name or re.sub(r"[^A-Za-z0-9._-]", "-", hf_dir.resolve().name).lstrip("._-")
                 or "imported")
    return {
        "omnic": 1,
        "name": spec_name[:64],
        "model": model,
        "weights": {"source": "huggingface", "path": rel},
        "tokenizer": {"kind": "huggingface", "path": rel} if has_tokenizer else {"kind": "byte"},
    }, f"{hf_dir.resolve()} ({arch})"
