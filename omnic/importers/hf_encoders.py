"""Encoder towers from Hugging Face directories: SigLIP and CLIP vision towers, Whisper encoders.

`modalities.vision.weights` / `modalities.audio.weights` name a directory holding config.json and
safetensors. The config must agree with the spec's numbers (every disagreement is reported at
once, naming the spec field); the tensors are renamed to the component module's names
(`tower.*`). Projectors have no counterpart in these checkpoints and stay seeded random.

Accepted configs: SiglipVisionModel / SiglipVisionConfig or a full SiglipConfig (its
vision_config); CLIPVisionModel / CLIPVisionConfig or a full CLIPConfig; WhisperConfig as saved
by WhisperModel, WhisperForConditionalGeneration or a bare WhisperEncoder. Tensor names are found
under any prefix (`vision_model.`, `model.encoder.`, none as transformers 5 writes them).
"""

# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/configuration_siglip.py
# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/configuration_clip.py
# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/whisper/configuration_whisper.py

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any


from omnic.importers.hf import read_config

if TYPE_CHECKING:
    import torch

    from omnic.spec.modalities import Audio, Vision

_log = logging.getLogger(__name__)

# family -> defaults of its transformers vision config class (used for keys a config.json omits)
_VISION_DEFAULTS = {
    "siglip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
               "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
    "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
             "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
}
_WHISPER_DEFAULTS = {"num_mel_bins": 80, "encoder_layers": 4, "encoder_attention_heads": 6,
                     "encoder_ffn_dim": 1536, "d_model": 384, "max_source_positions": 1500,
                     "activation_function": "gelu", "scale_embedding": False}
# transformers' hidden_act -> omnic activation
_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu"}

_VISION_NAMES = [  # (HF name after the prefix, omnic module name)
    (r"embeddings\.patch_embedding\.(weight|bias)", r"tower.patch_embed.\1"),
    (r"embeddings\.position_embedding\.weight", "tower.pos_embed"),
    (r"embeddings\.class_embedding", "tower.class_embed"),
    (r"pre_layrnorm\.(weight|bias)", r"tower.pre_norm.\1"),
    (r"post_layernorm\.(weight|bias)", r"tower.post_norm.\1"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"tower.layers.\1.attn_norm.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)",
     r"tower.layers.\1.attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"tower.layers.\1.attn.o.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"tower.layers.\1.ffn_norm.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"tower.layers.\1.ffn.up.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"tower.layers.\1.ffn.down.\2"),
]
_WHISPER_NAMES = [
    (r"conv([12])\.(weight|bias)", r"tower.conv\1.\2"),
    (r"embed_positions\.weight", "tower.pos_embed"),
    (r"layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"tower.layers.\1.attn_norm.\2"),
    (r"layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"tower.layers.\1.attn.\2.\3"),
    (r"layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"tower.layers.\1.attn.o.\2"),
    (r"layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"tower.layers.\1.ffn_norm.\2"),
    (r"layers\.(\d+)\.fc1\.(weight|bias)", r"tower.layers.\1.ffn.up.\2"),
    (r"layers\.(\d+)\.fc2\.(weight|bias)", r"tower.layers.\1.ffn.down.\2"),
    (r"layer_norm\.(weight|bias)", r"tower.norm.\1"),
]


class EncoderMismatch(ValueError):
    """An encoder checkpoint's config.json disagrees with the spec, or cannot be expressed.

    (A ValueError, not torch-side WeightError: `check_vision`/`check_audio` are torch-free and
    `omnic validate` runs them.)
    """


def _vision_config(hf_dir: Path) -> tuple[str, dict[str, Any]]:
    """(family, vision config with defaults filled in) of a SigLIP or CLIP directory."""
    raw = read_config(hf_dir)
    model_type = str(raw.get("model_type", ""))
    family = ("siglip" if model_type.startswith("siglip")
              else "clip" if model_type.startswith("clip") else None)
    if family is None:
        archs = ", ".join(raw.get("architectures") or []) or f"model_type={model_type!r}"
        raise EncoderMismatch(f"modalities.vision.weights: {hf_dir} holds {archs}; omnic imports "
                              "SigLIP and CLIP vision towers (siglip, siglip_vision_model, clip, "
                              "clip_vision_model)")
    config = raw.get("vision_config") if model_type in ("siglip", "clip") else raw
    return family, {**_VISION_DEFAULTS[family],
                    **{k: v for k, v in (config or {}).items() if v is not None}}


def _square(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value[0] if len(set(value)) == 1 else tuple(value)
    return value


def _refuse_mismatches(hf_dir: Path, section: str, pairs: list[tuple[str, Any, str, Any]]) -> None:
    """Raise EncoderMismatch listing every (spec field, spec value, config key, config value)
    that differs."""
    bad = []
    for field, ours, key, theirs in pairs:
        same = (math.isclose(ours, theirs, rel_tol=1e-9) if isinstance(ours, float)
                else ours == theirs)
        if not same:
            bad.append(f"modalities.{section}.{field} is {ours!r} but config.json {key} "
                       f"is {theirs!r}")
    if bad:
        raise EncoderMismatch(f"{hf_dir}/config.json disagrees with the spec: " + "; ".join(bad))


def check_vision(hf_dir: Path, v: "Vision") -> str:
    """Raise EncoderMismatch unless the directory's vision tower is the spec's; returns its
    family."""
    family, c = _vision_config(hf_dir)
    act = _ACTIVATIONS.get(c["hidden_act"])
    if act is None:
        raise EncoderMismatch(f"{hf_dir}/config.json: hidden_act {c['hidden_act']!r} is not one of "
                              f"{', '.join(_ACTIVATIONS)} (modalities.vision.activation)")
    _refuse_mismatches(hf_dir, "vision", [
        ("kind", v.kind, "model_type", family),
        ("image_size", v.image_size, "image_size", _square(c["image_size"])),
        ("patch_size", v.patch_size, "patch_size", _square(c["patch_size"])),
        ("channels", v.channels, "num_channels", c["num_channels"]),
        ("d_model", v.d_model, "hidden_size", c["hidden_size"]),
        ("n_layers", v.n_layers, "num_hidden_layers", c["num_hidden_layers"]),
        ("n_heads", v.n_heads, "num_attention_heads", c["num_attention_heads"]),
        ("ffn_hidden", v.ffn_width, "intermediate_size", c["intermediate_size"]),
        ("activation", v.act, "hidden_act", act),
        ("layer_norm_eps", v.eps, "layer_norm_eps", float(c["layer_norm_eps"])),
    ])
    return family


def check_audio(hf_dir: Path, a: "Audio") -> None:
    """Raise EncoderMismatch unless the directory's Whisper encoder is the spec's."""
    raw = read_config(hf_dir)
    if raw.get("model_type") != "whisper":
        archs = ", ".join(raw.get("architectures") or []) or f"model_type={raw.get('model_type')!r}"
        raise EncoderMismatch(f"modalities.audio.weights: {hf_dir} holds {archs}; omnic imports "
                              "Whisper encoders (model_type whisper)")
    c = {**_WHISPER_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if c["activation_function"] != "gelu":
        raise EncoderMismatch(f"{hf_dir}/config.json: activation_function "
                              f"{c['activation_function']!r} is not supported (Whisper uses gelu)")
    _refuse_mismatches(hf_dir, "audio", [
        ("n_mels", a.n_mels, "num_mel_bins", c["num_mel_bins"]),
        ("n_frames", a.n_frames, "2 * max_source_positions", 2 * c["max_source_positions"]),
        ("d_model", a.d_model, "d_model", c["d_model"]),
        ("n_layers", a.n_layers, "encoder_layers", c["encoder_layers"]),
        ("n_heads", a.n_heads, "encoder_attention_heads", c["encoder_attention_heads"]),
        ("ffn_hidden", a.ffn_width, "encoder_ffn_dim", c["encoder_ffn_dim"]),
        # WhisperEncoder's LayerNorms use torch's default epsilon
        ("layer_norm_eps", a.layer_norm_eps, "(nn.LayerNorm default)", 1e-5),
    ])


def _read(hf_dir: Path, anchor: str, table: list[tuple[str, str]], wanted: set[str],
          section: str, ignore: re.Pattern) -> dict[str, "torch.Tensor"]:
    """Tensors of the tower whose `anchor` key is found under some prefix, renamed by `table`."""
    from omnic.importers.checkpoint import read_safetensors, safetensors_keys
    from omnic.importers.hf_weights import checkpoint_files

    files = checkpoint_files(hf_dir)
    keys = {k: f for f in files for k in safetensors_keys(f)}
    prefixes = sorted(k[: -len(anchor)] for k in keys if k.endswith(anchor))
    if not prefixes:
        raise EncoderMismatch(f"modalities.{section}.weights: no tensor named *{anchor} "
                              f"in {hf_dir}")
    prefix = prefixes[0]  # the shortest: a tower directly, not one nested in another model
    rules = [(re.compile(re.escape(prefix) + pat), repl) for pat, repl in table]
    plan: dict[Path, dict[str, str]] = {}
    for key, f in keys.items():
        if not key.startswith(prefix):
            continue
        for pattern, repl in rules:
            m = pattern.fullmatch(key)
            if m:
                name = m.expand(repl)
                if name in wanted:
                    plan.setdefault(f, {})[key] = name
                elif not ignore.fullmatch(name):
                    raise EncoderMismatch(f"{hf_dir}: tensor {key} (as {name}) has no place in "
                                          f"modalities.{section}")
                break
    state = {}
    for f, names in plan.items():
        for key, tensor in read_safetensors(f, list(names)):
            state[names[key]] = tensor.contiguous()
    return state


def vision_weights(hf_dir: Path, v: "Vision") -> dict[str, "torch.Tensor"]:
    """The vision tower's tensors under the `vision_encoder` module's names (`tower.*`)."""
    from omnic.importers.checkpoint import check_weights
    from omnic.spec.component_inventory import vision_tensors

    family = check_vision(hf_dir, v)
    inventory = [t for t in vision_tensors(v, 1) if t.name.startswith("tower.")]
    # CLIP's post_layernorm only normalises the pooled class token; LLaVA-style models read the
    # patch tokens before it, so it is not part of the tower.
    ignore = re.compile(r"tower\.post_norm\..*" if family == "clip" else r"(?!)")
    state = _read(hf_dir, "embeddings.patch_embedding.weight", _VISION_NAMES,
                  {t.name for t in inventory}, "vision", ignore)
    check_weights(state, inventory, f"{hf_dir} ({family} vision tower)")
    _log.info(f"import: {family} vision tower from {hf_dir} ({len(state)} tensors); "
               "projector seeded random (no counterpart in the checkpoint)")
    return state


def audio_weights(hf_dir: Path, a: "Audio") -> dict[str, "torch.Tensor"]:
    """The Whisper encoder's tensors under the `audio_encoder` module's names (`tower.*`)."""
    from omnic.importers.checkpoint import check_weights
    from omnic.spec.component_inventory import audio_tensors

    check_audio(hf_dir, a)
    inventory = [t for t in audio_tensors(a, 1) if t.name.startswith("tower.")]
    state = _read(hf_dir, "conv1.weight", _WHISPER_NAMES, {t.name for t in inventory}, "audio",
                  re.compile(r"(?!)"))
    check_weights(state, inventory, f"{hf_dir} (Whisper encoder)")
    _log.info(f"import: Whisper encoder from {hf_dir} ({len(state)} tensors); "
               "projector seeded random (no counterpart in the checkpoint)")
    return state
