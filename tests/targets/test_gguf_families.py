"""Every family omnic writes for llama.cpp compiles to an F32 GGUF that llama.cpp runs like the
reference: the same 16 greedy tokens (llama.cpp's own sampler, `Llama.generate` at temperature 0)
and logits within fp32 noise along the whole sequence, past every sliding window.

Checkpoints are tiny transformers models built from random configs (nothing downloaded), with
the features that change the GGUF written (rope scaling kinds, sliding windows shorter than the
sequence, per-kind RoPE bases, NoPE layers, partial rotary, soft-caps, unit-offset norms,
post-norm blocks, Granite's scales, experts). The reference is omnic's PyTorch decoder built from
the same checkpoint. Families the Hugging Face importer translates are imported with it (which
tests/importers checks against transformers); the others (HAND) have their spec written here from
the config, their weights renamed from transformers' state dict, and the decoder is checked
against transformers itself first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              bos_token_id=256, eos_token_id=257, pad_token_id=258)
# family -> (config class, overrides, llama.cpp architecture expected)
FAMILIES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}), "llama"),
    "qwen2": ("Qwen2Config", dict(rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), "qwen2"),
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "linear", "factor": 2.0}), "qwen3"),
    "mistral": ("MistralConfig", dict(sliding_window=8), "granite_swa"),
    "gemma": ("GemmaConfig", dict(head_dim=16), "gemma"),
    "gemma2": ("Gemma2Config", dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                    attn_logit_softcapping=20.0, final_logit_softcapping=15.0),
               "gemma2"),
    "phi3": ("Phi3Config", dict(), "llama"),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2), "llama"),
}
# the configs' own ids for the spec blocks below
_BASE = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "head_dim": 16, "ffn": {"kind": "swiglu", "hidden": 128},
         "norm": {"kind": "rmsnorm", "eps": 1e-6}, "context_length": 64}
_FACTORS = {"short_factor": [1.0, 1.05, 1.1, 1.3, 1.6, 2.0],
            "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0]}
# family -> (config class, overrides, the spec's model block written from that config, arch)
HAND: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    # Gemma 3: 2 sliding : 1 full cut at 4 layers, local base 50000 (not llama.cpp's default
    # 10000) unscaled, global base 1e6
    # with linear scaling, per-head q/k norms, final soft-cap
    "gemma3": ("Gemma3TextConfig", dict(
        num_hidden_layers=4, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"], final_logit_softcapping=15.0, rms_norm_eps=1e-6,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e6}}), {
        "n_layers": 4, "ffn": {"kind": "geglu", "hidden": 128},
        "norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True},
        "rope": {"theta": 1e6, "scaling": {"kind": "linear", "factor": 2.0},
                 "sliding": {"theta": 50000.0}},
        "tie_embeddings": True, "qk_norm": True, "sliding_window": {"size": 4},
        "layer_pattern": "2 sliding : 1 full ...", "scale_embeddings": True,
        "post_norms": True, "final_softcap": 15.0}, "gemma3"),
    # SmolLM3: no RoPE on every 4th layer
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, head_dim=16, rms_norm_eps=1e-6,
                                      tie_word_embeddings=True, rope_theta=10000.0), {
        "n_layers": 4, "rope": {"theta": 10000.0}, "tie_embeddings": True,
        "layer_pattern": "3 full : 1 nope"}, "smollm3"),
    # Phi-4-mini: 12 of 16 dims rotate, LongRoPE (the long factors: context 64 > 16)
    "phi3_longrope": ("Phi3Config", dict(
        rms_norm_eps=1e-6, tie_word_embeddings=True, original_max_position_embeddings=16,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.75,
                         "original_max_position_embeddings": 16, **_FACTORS}), {
        "rope": {"theta": 10000.0, "rotary_dim": 12, "scaling": {
            "kind": "longrope", "factor": 4.0, "original_context_length": 16, **_FACTORS}},
        "tie_embeddings": True}, "phi3"),
    "qwen3moe": ("Qwen3MoeConfig", dict(head_dim=16, num_experts=4, num_experts_per_tok=2,
                                        moe_intermediate_size=128, norm_topk_prob=True,
                                        rms_norm_eps=1e-6), {
        "qk_norm": True, "moe": {"experts": 4, "top_k": 2}}, "qwen3moe"),
    # OLMo 2: norms after attention and FFN only, q/k norms over all heads
    "olmo2": ("Olmo2Config", dict(rms_norm_eps=1e-6), {
        "pre_norms": False, "post_norms": True, "qk_norm": True, "qk_norm_width": "full"},
        "olmo2"),
    "granite": ("GraniteConfig", dict(rms_norm_eps=1e-6, embedding_multiplier=4.0,
                                      residual_multiplier=0.5, attention_multiplier=0.3,
                                      logits_scaling=2.0), {
        "embedding_multiplier": 4.0, "residual_multiplier": 0.5, "attn_scale": 0.3,
        "logits_scaling": 2.0}, "granite"),
}
PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64, 17, 200]  # longer than the windows
STEPS = 16
DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}


def _hf_model(cls_name: str, extra: dict[str, Any], unit_offset: bool) -> Any:
    config = getattr(transformers, cls_name)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager").eval()
    # std 0.1 weights (transformers' 0.02 init gives near-flat logits), norms near neutral
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            if p.ndim == 1 and "norm" in name and not unit_offset:
                noise += 1.0
            p.copy_(noise)
    return model


def _checkpoint(family: str, root: Path) -> Path:
    from omnic.tokenizer import ByteTokenizer

    cls_name, extra, _ = FAMILIES[family]
    model = _hf_model(cls_name, extra, family.startswith("gemma"))
    out = root / family
    model.save_pretrained(out)
    ByteTokenizer(COMMON["vocab_size"]).save(out)
    return out


def _resolved(name: str, model: dict[str, Any], weights: dict[str, Any], tok: Path
              ) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": name, "device": DEVICE, "model": model, "weights": weights,
        "tokenizer": {"kind": "huggingface", "path": str(tok)},
        "quantization": {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": "F32"}}})


def _spec(hf_dir: Path) -> ResolvedSpec:
    from omnic.importers.hf import model_from_config, read_config

    _, model = model_from_config(read_config(hf_dir))
    return _resolved(hf_dir.name, model, {"source": "huggingface", "path": str(hf_dir)}, hf_dir)


# transformers' names after "model.layers.{i}." -> omnic's after "layers.{i}."
_RENAME = [(r"input_layernorm\.weight", "attn_norm.weight"),
           (r"self_attn\.([qkvo])_proj\.(weight|bias)", r"attn.\1.\2"),
           (r"self_attn\.([qk])_norm\.weight", r"attn.\1_norm.weight"),
           (r"mlp\.(gate|up|down)_proj\.weight", r"ffn.\1.weight"),
           (r"mlp\.gate\.weight", "ffn.router.weight"),
           (r"pre_feedforward_layernorm\.weight", "ffn_norm.weight"),
           (r"post_feedforward_layernorm\.weight", "post_ffn_norm.weight")]


def omnic_state(hf: Any, model: dict[str, Any]) -> dict[str, Any]:
    """transformers' state dict in omnic's names (Phi-3's fused qkv / gate_up and the fused
    experts of transformers 5 split), for a spec `model` block."""
    q_rows = model["n_heads"] * model["head_dim"]
    kv_rows = model["n_kv_heads"] * model["head_dim"]
    # post_attention_layernorm: the FFN's pre-norm in llama blocks, the norm after attention
    # in Gemma's sandwich and OLMo 2's post-norm blocks
    post = "post_attn_norm.weight" if model.get("post_norms") else "ffn_norm.weight"
    out: dict[str, Any] = {}
    for name, t in hf.state_dict().items():
        t = t.detach().float().contiguous()
        top = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
               "lm_head.weight": None if model.get("tie_embeddings") else "lm_head.weight"}
        if name in top:
            if top[name]:
                out[top[name]] = t
            continue
        i, rest = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name).groups()
        p = f"layers.{i}."
        if rest == "post_attention_layernorm.weight":
            out[p + post] = t
        elif rest == "self_attn.qkv_proj.weight":
            q, k, v = t.split([q_rows, kv_rows, kv_rows])
            out |= {p + "attn.q.weight": q, p + "attn.k.weight": k, p + "attn.v.weight": v}
        elif rest == "mlp.gate_up_proj.weight":
            out[p + "ffn.gate.weight"], out[p + "ffn.up.weight"] = t.chunk(2)
        elif rest == "mlp.experts.gate_up_proj":  # [E, 2I, D]: gate rows, then up rows
            for e, w in enumerate(t):
                gate, up = w.chunk(2)
                out |= {f"{p}ffn.experts.{e}.gate.weight": gate,
                        f"{p}ffn.experts.{e}.up.weight": up}
        elif rest == "mlp.experts.down_proj":  # [E, D, I]
            out |= {f"{p}ffn.experts.{e}.down.weight": w for e, w in enumerate(t)}
        else:
            for pattern, repl in _RENAME:
                if re.fullmatch(pattern, rest):
                    out[p + re.sub(pattern, repl, rest)] = t
                    break
            else:
                raise KeyError(f"no omnic name for {name}")
    return {k: v.contiguous() for k, v in out.items()}


def hand_checkpoint(family: str, root: Path) -> tuple[ResolvedSpec, Any]:
    """(the spec of a HAND family, its transformers model): weights as omnic-named
    safetensors beside a byte tokenizer."""
    from safetensors.torch import save_file

    from omnic.tokenizer import ByteTokenizer

    cls_name, extra, block, _ = HAND[family]
    model = {**_BASE, **block}
    hf = _hf_model(cls_name, extra, family.startswith("gemma"))
    out = root / family
    out.mkdir(parents=True)
    save_file(omnic_state(hf, model), out / "model.safetensors")
    ByteTokenizer(COMMON["vocab_size"]).save(out)
    weights = {"source": "safetensors", "path": str(out / "model.safetensors")}
    return _resolved(family, model, weights, out), hf


def _llama_cpp_greedy(runner: Any, prompt: list[int], steps: int) -> list[int]:
    """llama.cpp's own greedy decoding: llama-cpp-python's `generate` with its greedy sampler."""
    runner.reset()
    out: list[int] = []
    for token in runner.llama.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                       repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == steps:
            break
    return out


def _runs_like_the_reference(family: str, spec: ResolvedSpec, decoder: Any, arch: str,
                             tmp_path: Path) -> None:
    target = get_target("gguf")
    assert target.check(spec) == []
    program = Program(spec, tmp_path, decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "build" / "gguf")
    assert artifact.details["architecture"] == arch
    runner = target.load(artifact, tmp_path / "build")
    try:
        assert runner.load_warnings == []
        ref_tokens, ref_prompt = greedy(TorchRunner(decoder), PROMPT, STEPS)
        assert np.abs(ref_prompt).max() > 1.0  # logits large enough for the comparison to bite
        assert _llama_cpp_greedy(runner, PROMPT, STEPS) == ref_tokens
        # the whole generated sequence in one call: every position, past each sliding window
        full = np.asarray(PROMPT + ref_tokens[:-1], np.int64)
        ref_runner = TorchRunner(decoder)
        ref_runner.reset()
        ref = ref_runner.forward(full)
        runner.reset()
        got = runner.forward(full)
        err = np.abs(got - ref).max()
        # fp32 both sides; llama.cpp's GELU uses an fp16 lookup table (ggml-cpu vec.h,
        # GGML_GELU_FP16), so the GeGLU families get fp16-level error in the FFN
        tol = (2e-2 if family.startswith("gemma") else 1e-3) * max(1.0, np.abs(ref).max())
        assert err < tol, f"{family}: max logit error {err:.3g} (tolerance {tol:.3g})"
        print(f"{family}: {arch}, max logit error {err:.2e} (logits up to "
              f"{np.abs(ref).max():.1f})")
        # llama.cpp tokenizes text exactly as the checkpoint's tokenizer.json
        from omnic.tokenizer import load_tokenizer

        tok = load_tokenizer(spec, tmp_path)
        text = "héllo  wörld\n"
        assert (runner.llama.tokenize(text.encode(), add_bos=False, special=False)
                == tok.encode(text))
    finally:
        runner.close()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_f32_gguf_runs_like_the_reference(family: str, tmp_path: Path) -> None:
    hf_dir = _checkpoint(family, tmp_path / "hf")
    spec = _spec(hf_dir)
    decoder = build_model(spec, tmp_path)
    _runs_like_the_reference(family, spec, decoder, FAMILIES[family][2], tmp_path)


@pytest.mark.parametrize("family", sorted(HAND))
def test_new_family_f32_gguf_runs_like_transformers(family: str, tmp_path: Path) -> None:
    spec, hf = hand_checkpoint(family, tmp_path / "hf")
    decoder = build_model(spec, tmp_path)
    # the hand-written spec is the checkpoint: omnic's decoder against transformers (fp32, the
    # same math in another op order) on a sequence past every window and original context
    ids = np.asarray(PROMPT * 2, np.int64)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    ours = TorchRunner(decoder).forward(ids)
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())
    _runs_like_the_reference(family, spec, decoder, HAND[family][3], tmp_path)


def _random_decoder(name: str, model: dict[str, Any], root: Path) -> tuple[ResolvedSpec, Any]:
    """A spec with seeded random weights, matrices scaled to std ~0.1 (logits that bite)."""
    from omnic.tokenizer import ByteTokenizer

    ByteTokenizer(COMMON["vocab_size"]).save(root / "tok")
    spec = _resolved(name, {**_BASE, **model}, {"source": "random", "seed": 5}, root / "tok")
    decoder = build_model(spec, root)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.ndim > 1:
                p.mul_(5.0)
    return spec, decoder


def test_window_with_nope_layers_runs_as_granite_swa(tmp_path: Path) -> None:
    """Sliding RoPE layers between global NoPE ones (Llama 4's interleaving) have no Hugging
    Face family here; the reference is omnic's decoder, whose windows (mistral) and NoPE layers
    (smollm3) are checked against transformers above. llama.cpp: granite_swa's rope_pattern."""
    spec, decoder = _random_decoder("window-nope", {
        "n_layers": 4, "sliding_window": {"size": 4}, "layer_pattern": "1 sliding : 1 nope"},
        tmp_path)
    _runs_like_the_reference("window_nope", spec, decoder, "granite_swa", tmp_path)


def test_sliding_layers_get_a_window_sized_kv_cache(tmp_path: Path) -> None:
    """The runner's llama.cpp context keeps n_ctx cells for the global layers and, for the
    sliding ones, GGML_PAD(window + n_ubatch, 256) (llama-kv-cache-iswa.cpp with swa_full off):
    here 4096 cells x 1 layer and 1024 x 5 instead of 4096 x 6 (2.25 of 6 MiB in F32)."""
    spec, decoder = _random_decoder("swa-cache", {
        **HAND["gemma3"][2], "n_layers": 6, "layer_pattern": "5 sliding : 1 full",
        "sliding_window": {"size": 512}, "context_length": 4096}, tmp_path)
    target = get_target("gguf")
    program = Program(spec, tmp_path, decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "build" / "gguf")
    runner = target.load(artifact, tmp_path / "build")
    try:
        assert runner.kv_caches == [(4096, 1), (1024, 5)]  # n_ubatch = 512
        per_cell = 2 * spec.model.kv_heads * spec.model.dim_per_head * 4  # K and V, F32
        total = sum(cells * layers for cells, layers in runner.kv_caches) * per_cell
        assert total == int(2.25 * 2**20)
        # the memory plan's layout (torch-free) predicts what llama.cpp allocated
        from omnic.targets.kv_layout import kv_positions

        planned = kv_positions(spec, "gguf")
        assert sorted(runner.kv_caches, reverse=True) == sorted(
            {(n, planned.count(n)) for n in planned}, reverse=True)
    finally:
        runner.close()
