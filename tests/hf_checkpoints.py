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

# LongRoPE divisors of the 6 rotated pairs of a 16-dim head at partial_rotary_factor 0.75
_SHORT = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5]
_LONG = [1.0, 1.5, 2.5, 4.0, 6.0, 9.0]

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
    # 5 layers of "2 sliding : 1 full ...": the cut pattern; linear scaling on the full layers only
    "gemma3": ("Gemma3TextConfig", dict(
        head_dim=16, num_hidden_layers=5, sliding_window=4, sliding_window_pattern=3,
        query_pre_attn_scalar=16, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=6, no_rope_layer_interval=3)),
    # Phi-4-mini: partial rotary (12 of 16 dims), longrope, tied embeddings. A 64-token context
    # within original_max_position_embeddings: the short factors, as transformers picks for
    # sequences that short; the explicit factor makes the cos/sin scale differ from 1.
    "phi4_mini": ("Phi3Config", dict(
        partial_rotary_factor=0.75, tie_word_embeddings=True, original_max_position_embeddings=64,
        rope_scaling={"rope_type": "longrope", "factor": 4.0, "short_factor": _SHORT,
                      "long_factor": _LONG})),
    # ... and past it (the prompt is longer than 8): the long factors, chosen statically by omnic
    # and by transformers once the sequence passes 8 tokens
    "phi4_mini_long": ("Phi3Config", dict(
        partial_rotary_factor=0.75, tie_word_embeddings=True, original_max_position_embeddings=8,
        rope_scaling={"rope_type": "longrope", "short_factor": _SHORT, "long_factor": _LONG})),
    # norm_topk_prob false (Mixtral covers the renormalised routing)
    "qwen3_moe": ("Qwen3MoeConfig", dict(head_dim=16, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=64, norm_topk_prob=False)),
    "olmo2": ("Olmo2Config", dict()),
    # LFM2: gated short convolutions with one attention layer; the feed-forward width auto-
    # adjusted (2/3 of 128, rounded up to 32: 96), the kernel longer than LFM2's 3
    "lfm2": ("Lfm2Config", dict(num_hidden_layers=4, conv_L_cache=4, block_multiple_of=32,
                                layer_types=["conv", "conv", "full_attention", "conv"])),
    # Granite 4.0-H: Mamba-2 layers (two groups, a 4-token chunk so that transformers' chunked
    # scan crosses chunks) around one NoPE attention layer, a dense MLP, Granite's multipliers
    "granite4": ("GraniteMoeHybridConfig", dict(
        num_hidden_layers=4, layer_types=["mamba", "mamba", "attention", "mamba"],
        num_local_experts=0, shared_intermediate_size=96, mamba_n_heads=4, mamba_n_groups=2,
        mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=4, embedding_multiplier=3.0,
        residual_multiplier=0.5, logits_scaling=2.0, attention_multiplier=0.2)),
    # Qwen3.5: Gated DeltaNet layers (2 key heads serving 4 value heads) then one gated attention
    # layer with q/k norms and half the head rotated; zero-centred RMSNorms (the gated norm of
    # the DeltaNet layers is not)
    "qwen3_5": ("Qwen3_5TextConfig", dict(
        num_hidden_layers=4, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
        tie_word_embeddings=True, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "granite": ("GraniteConfig", dict(embedding_multiplier=3.0, residual_multiplier=0.5,
                                      logits_scaling=2.0, attention_multiplier=0.2)),
}


def _redraw(model: torch.nn.Module, unit_offset: bool) -> None:
    """Weights with std 0.1 (transformers' 0.02 init leaves logits too flat to test anything);
    norm weights around their neutral value (1, or 0 with a unit offset: Gemma's, Qwen3.5's but
    for its gated norm)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            if p.ndim == 1 and "norm" in name and (not unit_offset or "linear_attn" in name):
                noise += 1.0
            p.copy_(noise)


def import_checkpoint(family: str, root: Path, targets: str) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import --targets TARGETS` wrote for it)."""
    from omnic.cli.main import main

    ckpt = make_checkpoint(family, root)
    spec = root / f"{family}.yaml"
    assert main(["import", str(ckpt), "-o", str(spec), "--targets", targets]) == 0
    return ckpt, spec


def make_checkpoint(family: str, root: Path, **overrides) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    from omnic.tokenizer import ByteTokenizer

    cls_name, extra = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    _redraw(model, unit_offset=family.startswith(("gemma", "qwen3_5")))
    out = root / family
    model.save_pretrained(out)
    ByteTokenizer(COMMON["vocab_size"]).save(out)
    return out


def make_qwen35_vl_checkpoint(root: Path) -> Path:
    """The tiny qwen3_5 decoder inside a Qwen3_5ForConditionalGeneration (how Qwen3.5 is
    released: `text_config`, `model.language_model.*` and a vision tower `model.visual.*`),
    with a one-block vision tower of its own."""
    import transformers

    text_dir = make_checkpoint("qwen3_5", root / "text")
    text = transformers.AutoModelForCausalLM.from_pretrained(text_dir)
    text_config = text.config.to_dict()
    text_config["rope_parameters"] = {**text_config["rope_parameters"],
                                      "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    config = transformers.Qwen3_5Config(
        text_config=text_config, tie_word_embeddings=text.config.tie_word_embeddings,
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=text.config.hidden_size, num_position_embeddings=16,
                           patch_size=4),
        image_token_id=300, video_token_id=301, vision_start_token_id=302,
        vision_end_token_id=303)
    torch.manual_seed(0)
    model = transformers.Qwen3_5ForConditionalGeneration(config).eval()
    model.model.language_model.load_state_dict(
        {k[len("model."):]: v for k, v in text.state_dict().items() if k.startswith("model.")})
    out = root / "qwen3_5_vl"
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (text_dir / name).is_file():
            (out / name).write_bytes((text_dir / name).read_bytes())
    return out


# one short golden case (the compile's own check, inside the suite's time budget) and the
# int4 weights a scheme_builds "int4" build gets
GOLDEN = {"cases": 1, "prompt_tokens": 12, "decode_steps": 8}
INT4 = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True}}


def scheme_builds(spec_path: Path, tmp_path_factory, golden: dict = GOLDEN, int4: dict = INT4,
                  **extra):
    """scheme -> the pipeline's CompileResult for the imported spec at `spec_path` with golden
    settings `golden` (and the top-level `extra` keys), quantized with `int4` for scheme "int4":
    one build per scheme, made on first use (for a module-scoped fixture to share)."""
    import yaml

    from omnic.compiler.pipeline import compile

    built: dict[str, object] = {}

    def build(scheme: str):
        if scheme not in built:
            data = yaml.safe_load(spec_path.read_text())
            data.update(golden=golden, **extra)
            if scheme == "int4":
                data["quantization"] = int4
            path = spec_path.with_name(f"{spec_path.stem}_{scheme}.yaml")
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            built[scheme] = compile(path, tmp_path_factory.mktemp(scheme) / "build",
                                    progress=False, cache=False)
        return built[scheme]

    return build


def transformers_greedy(ckpt: Path, prompt: list[int], steps: int):
    """transformers' greedy tokens after `prompt` (no cache, eager attention), and its logits
    over `prompt` + those tokens but the last: (tokens, logits [len(prompt) + steps - 1, vocab])."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="eager")
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
        logits = hf(torch.tensor([ids[:-1]])).logits[0].numpy()
    return ids[len(prompt):], logits


def artifact_of(result, target: str):
    """The CompileResult's one artifact of `target`."""
    (a,) = [a for a in result.manifest.artifacts if a.target == target]
    return a
