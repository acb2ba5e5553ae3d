"""Qwen3.5's config.json fields (torch-free): Gated DeltaNet layers among gated attention layers.

Qwen3_5TextConfig names its layers in `layer_types` ("linear_attention": a Gated DeltaNet layer,
"full_attention"), or gives `full_attention_interval` (every n-th layer attends). Its attention
layers gate their output (q_proj holds each head's query and gate), norm q and k per head and
rotate `partial_rotary_factor` of each head (0.25 when absent); every RMSNorm but the DeltaNet's
gated one is zero-centred (Gemma's unit offset). The released checkpoints are
Qwen3_5ForConditionalGeneration: omnic imports their text decoder (`text_config`).
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3_5/configuration_qwen3_5.py
"""

from __future__ import annotations

from typing import Any

# Qwen3_5TextConfig's defaults, for the fields config.json may leave out
DEFAULTS: dict[str, Any] = {
    "tie_word_embeddings": False, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "head_dim": 256,
    "partial_rotary_factor": 0.25, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
}
ARCHS = ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
KINDS = {"linear_attention": "gated_deltanet", "full_attention": "full"}


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text decoder's fields of a Qwen3_5ForConditionalGeneration config (its `text_config`,
    with the top level's architectures and tie_word_embeddings, which wins as in transformers);
    any other config as it is."""
    if "Qwen3_5ForConditionalGeneration" not in (raw.get("architectures") or []):
        return raw
    text = dict(raw.get("text_config") or {})
    text["architectures"] = raw["architectures"]
    if "tie_word_embeddings" in raw:  # the top level's, as Qwen3_5ForConditionalGeneration ties
        text["tie_word_embeddings"] = raw["tie_word_embeddings"]
    return text


def layer_types(raw: dict[str, Any], n_layers: int) -> list[str]:
    """Each layer's omnic kind (an unknown type is kept as it is: the importer refuses it)."""
    types = raw.get("layer_types")
    if types is None:
        every = int(raw.get("full_attention_interval", 4))
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention"
                 for i in range(n_layers)]
    return [KINDS.get(t, t) for t in types]


def fields(get, model: dict[str, Any]) -> None:
    """The Qwen3.5 fields of the spec's `model:` block (`get` reads config.json with the
    defaults): q/k norms, the output gate and the DeltaNet block when some layer is one."""
    model.update(qk_norm=True, attn_output_gate=True)
    pattern = model.get("layer_pattern")
    if pattern is not None and "gated_deltanet" in pattern:
        model["gated_deltanet"] = {
            "key_heads": int(get("linear_num_key_heads")),
            "value_heads": int(get("linear_num_value_heads")),
            "key_dim": int(get("linear_key_head_dim")),
            "value_dim": int(get("linear_value_head_dim")),
            "kernel": int(get("linear_conv_kernel_dim"))}
