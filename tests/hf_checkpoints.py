"""Tiny transformers checkpoints of every imported family, built from random configs.

(A module of its own, not conftest.py, so that test modules can import it unambiguously.)

Nothing is downloaded: each model is constructed from a config with `torch.manual_seed`, its
weights re-drawn large enough that every feature (soft-caps, sliding windows, routing) changes
the logits visibly, then saved with `save_pretrained` next to a byte tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    bos_token_id=256, eos_token_id=257, pad_token_id=258,
)

# family -> (transformers config class name, config overrides)
FAMILIES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", dict(rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", dict(sliding_window=4)),
    "gemma": ("GemmaConfig", dict(head_dim=16)),
    "gemma2": ("Gemma2Config", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=5.0)),
    "phi3": ("Phi3Config", dict()),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
}


def _redraw(model: torch.nn.Module, unit_offset: bool) -> None:
    """Weights with std 0.1 (transformers' 0.02 init leaves logits too flat to test anything);
    norm weights around their neutral value (1, or 0 with Gemma's unit offset)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            if p.ndim == 1 and "norm" in name and not unit_offset:
                noise += 1.0
            p.copy_(noise)


def make_checkpoint(family: str, root: Path, **overrides) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    from omnic.tokenizer import ByteTokenizer

    cls_name, extra = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    _redraw(model, unit_offset=family.startswith("gemma"))
    out = root / family
    model.save_pretrained(out)
    ByteTokenizer(COMMON["vocab_size"]).save(out)
    return out
