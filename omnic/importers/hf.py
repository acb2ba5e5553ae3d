"""Import a Hugging Face checkpoint directory as an omnic spec (`omnic import HF_DIR -o spec.yaml`).

Only `config.json` is read here (torch-free); the weights stay in the directory and are loaded by
the builder through `omnic.importers.hf_weights`. Every config field that changes the network is
either translated or rejected with an error naming it: an import never silently drops a feature.
Defaults for absent fields are those of the transformers configuration class of each family.
ref: https://github.com/huggingface/transformers/tree/main/src/transformers/models
(configuration_*.py)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable


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
    "GemmaForCausalLM": ("gemma", {"tie_word_embeddings": True, "rope_theta": 10000.0,
                                   "rms_norm_eps": 1e-6, "head_dim": 256}),
    "Gemma2ForCausalLM": ("gemma2", {"tie_word_embeddings": True, "rope_theta": 10000.0,
                                     "rms_norm_eps": 1e-6, "head_dim": 256,
                                     "query_pre_attn_scalar": 256,
                                     "attn_logit_softcapping": 50.0,
                                     "final_logit_softcapping": 30.0,
                                     "sliding_window": 4096}),
    "Phi3ForCausalLM": ("phi3", {"tie_word_embeddings": False, "rope_theta": 10000.0,
                                 "rms_norm_eps": 1e-5}),
    "MixtralForCausalLM": ("mixtral", {"tie_word_embeddings": False, "rope_theta": 1e6,
                                       "rms_norm_eps": 1e-5}),
}

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

    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any], arch: str) -> None:
        self.raw, self.defaults, self.arch = raw, defaults, arch

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        if value is None:
            value = self.defaults.get(key, default)
        return value

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise UnsupportedModel(f"{self.arch}: config.json has no {key!r}")
        return value

    def reject(self, key: str, ok: Callable[[Any], bool], why: str) -> None:
        value = self.raw.get(key)
        if value is not None and not ok(value):
            raise UnsupportedModel(f"{self.arch}: {key}={value!r} is not supported: {why}")


def _rope(c: _Config) -> dict[str, Any]:
    """RoPE theta and scaling from either layout: `rope_parameters` (transformers >= 5) or
    `rope_theta` + `rope_scaling` (older files)."""
    params = dict(c.raw.get("rope_parameters") or {})
    if "full_attention" in params:  # per-layer-type rope (Gemma 3 style)
        raise UnsupportedModel(f"{c.arch}: per-layer-type rope_parameters are not supported")
    scaling = dict(c.raw.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta") or c.get("rope_theta"))
    partial = merged.get("partial_rotary_factor", c.raw.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise UnsupportedModel(f"{c.arch}: partial_rotary_factor={partial} (partial RoPE) "
                               "is not supported")
    kind = merged.get("rope_type") or merged.get("type") or "default"
    original = (merged.get("original_max_position_embeddings")
                or c.raw.get("original_max_position_embeddings"))
    if kind == "default":
        return {"theta": theta, "scaling": None}
    if kind == "linear":
        return {"theta": theta, "scaling": {"kind": "linear", "factor": float(merged["factor"])}}
    if kind == "llama3":
        return {"theta": theta, "scaling": {
            "kind": "llama3", "factor": float(merged["factor"]),
            "low_freq_factor": float(merged["low_freq_factor"]),
            "high_freq_factor": float(merged["high_freq_factor"]),
            "original_context_length": int(original),
        }}
    if kind == "yarn":
        for key in ("mscale", "mscale_all_dim"):
            if merged.get(key):
                raise UnsupportedModel(f"{c.arch}: yarn with {key} is not supported")
        if merged.get("truncate") is False:
            raise UnsupportedModel(f"{c.arch}: yarn with truncate=false is not supported")
        if original is None:
            raise UnsupportedModel(f"{c.arch}: yarn scaling without "
                                   "original_max_position_embeddings")
        factor = merged.get("factor") or c.need("max_position_embeddings") / original
        out = {"kind": "yarn", "factor": float(factor), "original_context_length": int(original)}
        for key in ("beta_fast", "beta_slow", "attention_factor"):
            if merged.get(key) is not None:
                out[key] = float(merged[key])
        return {"theta": theta, "scaling": out}
    raise UnsupportedModel(
        f"{c.arch}: rope type {kind!r} is not supported (omnic has default, linear, llama3, yarn)"
    )


def _sliding(c: _Config, family: str, n_layers: int) -> dict[str, Any] | None:
    """Sliding-window attention from `layer_types` (or the family's rule when it is absent)."""
    window = c.raw.get("sliding_window") if family != "gemma2" else c.get("sliding_window")
    types = c.raw.get("layer_types")
    if types is None:
        if family == "gemma2":
            types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(n_layers)]
        elif family in ("qwen2", "qwen3"):
            use = c.raw.get("use_sliding_window", False) and window is not None
            first = c.raw.get("max_window_layers", 28)
            types = ["sliding_attention" if use and i >= first else "full_attention"
                     for i in range(n_layers)]
        else:  # Mistral, Phi-3, Mixtral: the window applies to every layer when it is set
            types = ["sliding_attention" if window is not None else "full_attention"] * n_layers
    if family in ("qwen2", "qwen3") and not c.raw.get("use_sliding_window", False):
        window = None  # transformers drops the window unless use_sliding_window is true
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    unknown = sorted({t for t in types if t not in ("sliding_attention", "full_attention")})
    if unknown:
        raise UnsupportedModel(f"{c.arch}: layer types {unknown} are not supported")
    if not sliding or window is None:
        return None
    if len(sliding) == n_layers:
        return {"size": int(window), "layers": "all"}
    if sliding == list(range(0, n_layers, 2)):
        return {"size": int(window), "layers": "even"}
    raise UnsupportedModel(
        f"{c.arch}: sliding window on layers {sliding} is not supported (omnic has all layers or "
        "even layers)"
    )


def model_from_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, the spec's `model:` block) of a transformers config.json."""
    arch, family = family_of(config)
    c = _Config(config, FAMILIES[arch][1], arch)
    d, heads = int(c.need("hidden_size")), int(c.need("num_attention_heads"))
    n_layers = int(c.need("num_hidden_layers"))
    head_dim = c.raw.get("head_dim") or c.defaults.get("head_dim") or d // heads

    for key in ("attention_bias", "mlp_bias"):  # o_proj / MLP biases have no omnic tensor
        c.reject(key, lambda v: v is False, "omnic has biases on q, k and v only (qkv_bias)")
    if family == "gemma2" and c.raw.get("use_bidirectional_attention"):
        raise UnsupportedModel(f"{arch}: use_bidirectional_attention is not supported")
    act = c.raw.get("hidden_activation") or c.raw.get("hidden_act") or (
        "gelu_pytorch_tanh" if family.startswith("gemma") else "silu"
    )
    if family.startswith("gemma"):
        # transformers maps Gemma's legacy "gelu" to the tanh approximation (configuration_gemma.py)
        if act not in (*_TANH_GELU, "gelu"):
            raise UnsupportedModel(f"{arch}: hidden activation {act!r} is not supported")
        ffn_kind = "geglu"
    else:
        if act != "silu":
            raise UnsupportedModel(f"{arch}: hidden_act={act!r} is not supported "
                                   "(SwiGLU needs silu)")
        ffn_kind = "swiglu"

    model: dict[str, Any] = {
        "vocab_size": int(c.need("vocab_size")),
        "d_model": d,
        "n_layers": n_layers,
        "n_heads": heads,
        "n_kv_heads": int(c.raw.get("num_key_value_heads") or heads),
        "head_dim": int(head_dim),
        "ffn": {"kind": ffn_kind, "hidden": int(c.need("intermediate_size"))},
        "norm": {"kind": "rmsnorm", "eps": float(c.get("rms_norm_eps")),
                 "unit_offset": family.startswith("gemma")},
        "rope": _rope(c),
        "context_length": int(c.need("max_position_embeddings")),
        "tie_embeddings": bool(c.get("tie_word_embeddings")),
    }
    if family == "qwen2":
        model["qkv_bias"] = True  # hard-wired in Qwen2Attention
    if family == "qwen3":
        model["qk_norm"] = True
    window = _sliding(c, family, n_layers)
    if window:
        model["sliding_window"] = window
    if family.startswith("gemma"):
        model["scale_embeddings"] = True
    if family == "gemma2":
        model["post_norms"] = True
        model["attn_scale"] = float(c.get("query_pre_attn_scalar")) ** -0.5
        for key, field in (("attn_logit_softcapping", "attn_softcap"),
                           ("final_logit_softcapping", "final_softcap")):
            value = c.raw[key] if key in c.raw else c.defaults[key]
            if value is not None:
                model[field] = float(value)
    if family == "mixtral":
        model["moe"] = {"experts": int(c.need("num_local_experts")),
                        "top_k": int(c.need("num_experts_per_tok")),
                        "normalize_top_k": True}
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
