"""Granite 4's config.json fields (torch-free): Mamba-2 layers among attention layers.

GraniteMoeHybridConfig names its layers in `layer_types` (or the older `layers_block_type`):
"mamba" / "linear_attention" for a Mamba-2 layer, "attention" / "full_attention" for attention,
which has RoPE only when `position_embedding_type` is "rope" (Granite 4.0-H has none). The dense
models (num_local_experts 0) have one gated MLP per layer, `shared_mlp`, of
`shared_intermediate_size`; Granite's multipliers are those of GraniteForCausalLM.
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/granitemoehybrid/configuration_granitemoehybrid.py
"""

from __future__ import annotations

from typing import Any

# GraniteMoeHybridConfig's defaults, for the fields config.json may leave out
DEFAULTS: dict[str, Any] = {
    "tie_word_embeddings": False, "rope_theta": 10000.0, "intermediate_size": 11008,
    "rms_norm_eps": 1e-6,
    "embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0,
    "attention_multiplier": 1.0, "num_local_experts": 8, "shared_intermediate_size": 1024,
    "mamba_n_heads": 128, "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_head": "auto",
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_conv_bias": True, "mamba_proj_bias": False,
}
# layer types of GraniteMoeHybridConfig (legacy and current names) -> omnic layer kinds
KINDS = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "full",
         "full_attention": "full"}


def layer_types(raw: dict[str, Any], n_layers: int) -> list[str]:
    """Each layer's omnic kind; attention layers are `nope` unless the model has RoPE. An
    unknown type is kept as it is (the importer refuses it by name)."""
    types = raw.get("layer_types") or raw.get("layers_block_type") or ["mamba"] * n_layers
    rope = raw.get("position_embedding_type") == "rope"
    kinds = [KINDS.get(t, t) for t in types]
    return [k if k != "full" or rope else "nope" for k in kinds]


def unclamped(limit: list[Any]) -> bool:
    """Whether `time_step_limit` is (0, inf), which clamps nothing. transformers writes
    infinity as {"__float__": "Infinity"} (JSON has no such number)."""
    low, high = (float(v["__float__"]) if isinstance(v, dict) else float(v) for v in limit)
    return low == 0.0 and high == float("inf")


def mamba2(get, d_model: int) -> dict[str, Any]:
    """The spec's `mamba2:` block (`get` reads config.json with the defaults)."""
    heads = int(get("mamba_n_heads"))
    head_dim = get("mamba_d_head")
    if head_dim == "auto":
        head_dim = int(get("mamba_expand")) * d_model // heads
    return {"heads": heads, "head_dim": int(head_dim), "d_state": int(get("mamba_d_state")),
            "groups": int(get("mamba_n_groups")), "kernel": int(get("mamba_d_conv")),
            "conv_bias": bool(get("mamba_conv_bias"))}
