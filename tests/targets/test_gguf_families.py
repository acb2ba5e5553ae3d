"""Every Hugging Face family omnic imports compiles to an F32 GGUF that llama.cpp runs like the
reference: the same 16 greedy tokens and logits within fp32 noise along the whole sequence.

Checkpoints are tiny transformers models built from random configs (nothing downloaded), with
the features that change the GGUF written (rope scaling kinds, sliding windows shorter than the
sequence, soft-caps, Gemma unit-offset norms, experts). The reference is omnic's PyTorch decoder
built from the same checkpoint, which tests/importers checks against transformers itself.
"""

from __future__ import annotations

from pathlib import Path

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
PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64, 17, 200]  # longer than the windows
STEPS = 16
DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}


def _checkpoint(family: str, root: Path) -> Path:
    from omnic.tokenizer import ByteTokenizer

    cls_name, extra, _ = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager").eval()
    # std 0.1 weights (transformers' 0.02 init gives near-flat logits), norms near neutral
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            if p.ndim == 1 and "norm" in name and not family.startswith("gemma"):
                noise += 1.0
            p.copy_(noise)
    out = root / family
    model.save_pretrained(out)
    ByteTokenizer(COMMON["vocab_size"]).save(out)
    return out


def _spec(hf_dir: Path) -> ResolvedSpec:
    from omnic.importers.hf import model_from_config, read_config

    _, model = model_from_config(read_config(hf_dir))
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": hf_dir.name, "device": DEVICE, "model": model,
        "weights": {"source": "huggingface", "path": str(hf_dir)},
        "tokenizer": {"kind": "huggingface", "path": str(hf_dir)},
        "quantization": {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": "F32"}}})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_f32_gguf_runs_like_the_reference(family: str, tmp_path: Path) -> None:
    hf_dir = _checkpoint(family, tmp_path / "hf")
    spec = _spec(hf_dir)
    decoder = build_model(spec, tmp_path)
    target = get_target("gguf")
    assert target.check(spec) == []
    program = Program(spec, tmp_path, decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = target.lower(program, tmp_path / "build" / "gguf")
    assert artifact.details["architecture"] == FAMILIES[family][2]
    runner = target.load(artifact, tmp_path / "build")
    try:
        assert runner.load_warnings == []
        ref_tokens, ref_prompt = greedy(TorchRunner(decoder), PROMPT, STEPS)
        got_tokens, got_prompt = greedy(runner, PROMPT, STEPS)
        assert np.abs(ref_prompt).max() > 1.0  # logits large enough for the comparison to bite
        assert got_tokens == ref_tokens
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
        print(f"{family}: {artifact.details['architecture']}, max logit error {err:.2e}")
        # llama.cpp tokenizes text exactly as the checkpoint's tokenizer.json
        from omnic.tokenizer import load_tokenizer

        tok = load_tokenizer(spec, tmp_path)
        text = "héllo  wörld\n"
        assert (runner.llama.tokenize(text.encode(), add_bos=False, special=False)
                == tok.encode(text))
    finally:
        runner.close()
