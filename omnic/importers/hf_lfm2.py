"""LFM2's config.json fields (torch-free): gated short-convolution layers among attention layers.

LFM2 names some fields its own way (`norm_eps`, `conv_L_cache`, the older `block_ff_dim` and
`tie_embedding`) and shrinks its feed-forward width from `intermediate_size` when
`block_auto_adjust_ff_dim` is set, as Lfm2MLP does.
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/lfm2/configuration_lfm2.py
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/lfm2/modeling_lfm2.py
"""

from __future__ import annotations

from typing import Any

# Lfm2Config's defaults, for the fields config.json may leave out
DEFAULTS: dict[str, Any] = {
    "tie_word_embeddings": True, "rope_theta": 1e6, "norm_eps": 1e-5, "conv_L_cache": 3,
    "conv_bias": False, "block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
}
# layer_types of Lfm2Config -> omnic layer kinds
KINDS = {"conv": "short_conv", "full_attention": "full"}


def layer_types(raw: dict[str, Any], n_layers: int) -> list[str]:
    """`layer_types`, or the older `full_attn_idxs` (every other layer a convolution)."""
    types = raw.get("layer_types")
    if types is not None:
        return list(types)
    full = raw.get("full_attn_idxs")
    full = range(n_layers) if full is None else {int(i) for i in full}
    return ["full_attention" if i in full else "conv" for i in range(n_layers)]


def ffn_hidden(hidden: int, get, given) -> int:
    """Lfm2MLP's inner width from intermediate_size `hidden`: 2/3 of it, times the multiplier,
    rounded up to block_multiple_of, when block_auto_adjust_ff_dim is set (`get` reads
    config.json with Lfm2Config's defaults; `given` keeps an explicit null)."""
    if not get("block_auto_adjust_ff_dim"):
        return hidden
    hidden = int(2 * hidden / 3)
    multiplier = given("block_ffn_dim_multiplier")  # an explicit null: no multiplier, no rounding
    if multiplier is not None:
        hidden = int(float(multiplier) * hidden)
        step = int(get("block_multiple_of"))
        hidden = step * ((hidden + step - 1) // step)
    return hidden


def fields(get, given, model: dict[str, Any]) -> None:
    """The LFM2 fields of the spec's `model:` block: per-head q/k norms, the convolution (when
    some layer is one) and the feed-forward width (`get`, `given`: see ffn_hidden)."""
    tie = get("tie_embedding")
    model.update(qk_norm=True, tie_embeddings=bool(get("tie_word_embeddings") if tie is None
                                                    else tie))
    pattern = model.get("layer_pattern")
    if pattern is not None and "short_conv" in pattern:  # (every layer attention: no conv)
        model["short_conv"] = {"kernel": int(get("conv_L_cache"))}
    model["ffn"]["hidden"] = ffn_hidden(model["ffn"]["hidden"], get, given)
