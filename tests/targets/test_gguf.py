"""GGUF target on llama.cpp: tiny decoders compiled, loaded by llama-cpp-python, compared.

References: the PyTorch decoder (`TorchRunner`) with the fp32 weights, and the same decoder with
the artifact's `reference_weights` (the weights as stored, dequantized by gguf-py's reader) for
quantized files; llama.cpp's own quantizer for the block bytes; omnic's tokenizer for token ids.
Tolerances (see omnic/golden/tolerances.py for their sources): fp32 logits within
1e-4 + 1e-4 * max|logit|; quantized runs within NMSE 5e-3 of their exact reference (llama.cpp
quantizes activations to 8 bits inside quantized matmuls).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")

from omnic.model import build_model  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.runtime.generate import greedy  # noqa: E402
from omnic.runtime.torch_runner import TorchRunner  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}
# K-quants work on rows of 256: a wider tiny model
WIDE = {**TINY, "vocab_size": 512, "d_model": 256, "ffn": {"kind": "swiglu", "hidden": 512}}
PROMPT = [int(t) for t in np.random.default_rng(7).integers(0, 256, 20)]
STEPS = 16


def make_spec(model: dict[str, Any] | None = None, file_type: str = "F32", name: str = "tiny",
              **top: Any) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": name, "device": DEVICE, "model": {**TINY, **(model or {})},
        "quantization": {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": file_type}}, **top})


class Builds:
    """Each (model, file type) compiled once per session into its own build directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decoders: dict[str, Any] = {}
        self.artifacts: dict[tuple[str, str], Any] = {}

    def decoder(self, key: str, model: dict[str, Any]) -> Any:
        if key not in self.decoders:
            self.decoders[key] = build_model(make_spec(model), Path("."))
        return self.decoders[key]

    def compile(self, key: str, model: dict[str, Any], file_type: str, **top: Any):
        if (key, file_type) not in self.artifacts:
            spec = make_spec(model, file_type, **top)
            build = self.root / f"{key}-{file_type}"
            program = Program(spec, Path("."), self.decoder(key, model),
                              quant_plan=tensor_schemes(spec))
            (artifact,) = get_target("gguf").lower(program, build / "gguf")
            self.artifacts[key, file_type] = (spec, artifact, build)
        return self.artifacts[key, file_type]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="session")
def runners():
    opened = []

    def load(artifact, build):
        r = get_target("gguf").load(artifact, build)
        opened.append(r)
        return r

    yield load
    for r in opened:
        r.close()


def reference_decoder(decoder: Any, weights: dict[str, np.ndarray]) -> Any:
    import copy

    ref = copy.deepcopy(decoder)
    state = ref.state_dict()
    ref.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], np.float32).copy())
                         if k in weights else v for k, v in state.items()})
    return ref


def decode_logits(runner: Any, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Logits of the prompt (one call) then of each token (one call each): [T + S, V]."""
    runner.reset()
    rows = [runner.forward(np.asarray(prompt, np.int64))]
    rows += [runner.forward(np.asarray([t], np.int64)) for t in tokens]
    return np.concatenate(rows)


def kld_top1(p_logits: np.ndarray, q_logits: np.ndarray) -> tuple[float, float]:
    """Mean KL(p || q) in nats and top-1 agreement (llama-perplexity's definitions)."""
    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    kld = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    return kld, float((p_logits.argmax(-1) == q_logits.argmax(-1)).mean())


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    return float(((a - ref) ** 2).sum() / (ref**2).sum())


# -- fp32 ------------------------------------------------------------------------------------


def test_f32_matches_torch_logits_and_greedy_tokens(builds, runners) -> None:
    spec, artifact, build = builds.compile("llama", {}, "F32")
    assert artifact.precision == "fp32" and artifact.reference_weights is None
    assert artifact.details["architecture"] == "llama" and artifact.details["qk_permuted"]
    runner = runners(artifact, build)
    assert runner.load_warnings == []
    torch_runner = TorchRunner(builds.decoder("llama", {}))
    ref_tokens, _ = greedy(torch_runner, PROMPT, STEPS)
    got_tokens, _ = greedy(runner, PROMPT, STEPS)
    assert got_tokens == ref_tokens
    ref = decode_logits(torch_runner, PROMPT, ref_tokens[:-1])
    got = decode_logits(runner, PROMPT, ref_tokens[:-1])
    err = np.abs(got - ref).max()
    assert err <= 1e-4 + 1e-4 * np.abs(ref).max(), f"max abs logit error {err:.3g}"


def test_reset_starts_again_at_position_zero(builds, runners) -> None:
    _, artifact, build = builds.compile("llama", {}, "F32")
    runner = runners(artifact, build)
    runner.reset()
    first = runner.forward(np.asarray(PROMPT[:8], np.int64))
    runner.forward(np.asarray(PROMPT[8:12], np.int64))
    runner.reset()
    again = runner.forward(np.asarray(PROMPT[:8], np.int64))
    np.testing.assert_array_equal(first, again)


def test_metadata_carries_spec_provenance(builds) -> None:
    import hashlib
    import json

    from omnic.targets.gguf.write import metadata, provenance

    spec, artifact, build = builds.compile("llama", {}, "F32")
    path = build / artifact.path
    prov = provenance(path)
    # the spec as it reaches the file: the other targets' options are not in it (random
    # weights and a byte tokenizer: no file to name by content)
    expected = spec.model_dump(mode="json")
    expected["targets"] = {"gguf": expected["targets"]["gguf"]}
    assert prov["omnic.spec"] == expected
    text = json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert prov["omnic.spec_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    meta = metadata(path, ["general.architecture", "llama.context_length", "llama.block_count",
                           "llama.attention.head_count_kv", "tokenizer.ggml.model",
                           "tokenizer.ggml.bos_token_id", "general.file_type"])
    assert meta == {"general.architecture": "llama", "llama.context_length": 64,
                    "llama.block_count": 2, "llama.attention.head_count_kv": 2,
                    "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": 256,
                    "general.file_type": 0}


def test_byte_tokenizer_tokenizes_like_omnic(builds, runners) -> None:
    from omnic.tokenizer import ByteTokenizer

    _, artifact, build = builds.compile("llama", {}, "F32")
    llama = runners(artifact, build).llama
    tok = ByteTokenizer(TINY["vocab_size"])
    for text in ["hello world", "  two  spaces\nand a newline", "naïve café – ünïcødé ✓", "x"]:
        assert llama.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
        assert llama.tokenize(text.encode(), add_bos=True, special=False) == tok.encode(text, True)
        assert llama.detokenize(tok.encode(text)).decode() == text


def test_llama_cpp_warnings_are_caught(builds, tmp_path) -> None:
    """The runner's log capture sees a warning llama.cpp emits (a BPE vocab without
    pre-tokenizer)."""
    from omnic.targets.gguf import write as gguf_write
    from omnic.formats.gguf_arch import plan_arch, tensor_plan
    from omnic.targets.gguf.quant import plan_types
    from omnic.targets.gguf.runtime import LlamaCppRunner
    from omnic.formats.gguf_vocab import vocab_for

    spec = make_spec()
    decoder = builds.decoder("llama", {})
    plan, _ = plan_arch(spec.model)
    tensors = tensor_plan(spec.model, plan)
    types, _ = plan_types(spec, tensors)
    vocab = vocab_for(spec, Path("."))
    vocab.pre = None
    state = decoder.state_dict()
    path = tmp_path / "no-pre.gguf"
    gguf_write.write_gguf(path, spec, plan, tensors, types.types, types.file_type, vocab,
                          lambda n: state[n].numpy(), Path("."))
    runner = LlamaCppRunner(str(path), n_ctx=64, n_threads=2)
    try:
        assert any("pre-tokenizer" in w for w in runner.load_warnings), runner.load_warnings
    finally:
        runner.close()


# -- quantized -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_type", ["Q8_0", "Q4_0"])
def test_quantized_matches_its_exact_reference(builds, runners, file_type: str) -> None:
    spec, artifact, build = builds.compile("llama", {}, file_type)
    assert artifact.precision == file_type.lower()
    weights = artifact.reference_weights
    decoder = builds.decoder("llama", {})
    state = decoder.state_dict()
    assert set(weights) == set(state)
    # every stored tensor is within half a quantization step of the fp32 tensor (block absmax/127
    # for Q8_0, absmax/8 for Q4_0, per 32-wide block): a permuted or misplaced tensor is not
    step = {"Q8_0": 127.0, "Q4_0": 8.0}[file_type]
    for name, w in weights.items():
        true = state[name].numpy()
        if true.ndim == 1:
            np.testing.assert_array_equal(w, true)
            continue
        blocks = np.abs(true.reshape(-1, 32)).max(-1, keepdims=True)
        assert (np.abs(w - true).reshape(-1, 32) <= blocks / step * 1.01 + 1e-7).all(), name
    runner = runners(artifact, build)
    assert runner.load_warnings == []
    exact = TorchRunner(reference_decoder(decoder, weights))
    tokens, _ = greedy(exact, PROMPT, STEPS)
    got = decode_logits(runner, PROMPT, tokens[:-1])
    ref = decode_logits(exact, PROMPT, tokens[:-1])
    assert nmse(got, ref) < 5e-3
    got_tokens, _ = greedy(runner, PROMPT, STEPS)
    assert got_tokens[:4] == tokens[:4]
    fp32 = decode_logits(TorchRunner(decoder), PROMPT, tokens[:-1])
    kld, top1 = kld_top1(fp32, got)
    print(f"{file_type}: nmse vs exact {nmse(got, ref):.2e}, KLD vs fp32 {kld:.4f}, "
          f"top-1 {top1:.1%}")
    assert kld < {"Q8_0": 0.01, "Q4_0": 0.15}[file_type]


def _llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = True  # every tensor in the one type, no mixture
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                          ctypes.byref(params)) == 0


@pytest.mark.parametrize("file_type,ftype", [("Q8_0", 7), ("Q4_0", 2)])
def test_block_bytes_equal_llama_cpp_quantizer(builds, tmp_path, file_type: str,
                                               ftype: int) -> None:
    import gguf

    _, f32, f32_build = builds.compile("llama", {}, "F32")
    _, ours, build = builds.compile("llama", {}, file_type)
    theirs = tmp_path / "llama-quantize.gguf"
    from omnic.targets.gguf.runtime import capture_llama_log

    with capture_llama_log():
        _llama_quantize(f32_build / f32.path, theirs, ftype)
    a = {t.name: t for t in gguf.GGUFReader(build / ours.path).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    compared = 0
    for name, t in a.items():
        if t.tensor_type.name == file_type and b[name].tensor_type == t.tensor_type:
            assert np.array_equal(np.asarray(t.data), np.asarray(b[name].data)), name
            compared += 1
    assert compared >= 14  # 2 layers x 7 matrices at least


def test_q4_k_m_by_llama_cpp_quantizer_loads_and_runs(builds, runners) -> None:
    spec, artifact, build = builds.compile("wide", WIDE, "Q4_K_M")
    assert artifact.precision == "q4_k_m"
    types = artifact.quantization["tensor_types"]
    assert "Q4_K" in types and "Q6_K" in types, types  # llama.cpp's mixture, not ours
    runner = runners(artifact, build)
    assert runner.load_warnings == []
    decoder = builds.decoder("wide", WIDE)
    exact = TorchRunner(reference_decoder(decoder, artifact.reference_weights))
    tokens, _ = greedy(exact, PROMPT, STEPS)
    got = decode_logits(runner, PROMPT, tokens[:-1])
    ref = decode_logits(exact, PROMPT, tokens[:-1])
    assert nmse(got, ref) < 5e-3
    kld, top1 = kld_top1(decode_logits(TorchRunner(decoder), PROMPT, tokens[:-1]), got)
    print(f"Q4_K_M: KLD vs fp32 {kld:.4f}, top-1 {top1:.1%}")
    assert kld < 0.15


def test_k_quant_override_reaches_llama_cpp(builds) -> None:
    """An int8 embedding override under Q4_K_M becomes a Q8_0 token_embd (llama.cpp's
    tt_overrides)."""
    quant = {"weights": {"scheme": "fp32"},
             "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}
    spec, artifact, build = builds.compile("wide-override", WIDE, "Q4_K_M", quantization=quant)
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(build / artifact.path).tensors}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q4_K"


def test_k_mixture_falls_back_on_narrow_rows_like_llama_cpp(builds, runners) -> None:
    """Rows of 64 are not 256-blocks: llama.cpp stores Q5_K_M's tensors as Q5_1 (its own
    fallback, as for SmolLM's 576); the file still loads cleanly and matches its exact reference."""
    spec, artifact, build = builds.compile("llama", {}, "Q5_K_M")
    fallbacks = artifact.details["k_quant_fallbacks"]
    assert fallbacks and set(fallbacks.values()) <= {"Q5_1", "Q8_0"}, fallbacks
    runner = runners(artifact, build)
    assert runner.load_warnings == []
    decoder = builds.decoder("llama", {})
    exact = TorchRunner(reference_decoder(decoder, artifact.reference_weights))
    tokens, _ = greedy(exact, PROMPT, STEPS)
    assert nmse(decode_logits(runner, PROMPT, tokens[:-1]),
                decode_logits(exact, PROMPT, tokens[:-1])) < 5e-3


def test_an_override_coarser_than_the_file_type_sets_the_precision(builds) -> None:
    """An F32 file holding the spec's int8 embedding as Q8_0 is judged as q8_0, with its exact
    reference (the stored embedding, dequantized)."""
    quant = {"weights": {"scheme": "fp32"},
             "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}
    _, artifact, _ = builds.compile("llama-embed8", {}, "F32", quantization=quant)
    assert artifact.precision == "q8_0"
    assert artifact.quantization["tensor_types"] == {"F32": 20, "Q8_0": 1}
    weights = artifact.reference_weights
    true = builds.decoder("llama-embed8", {}).state_dict()
    assert not np.array_equal(weights["embed.weight"], true["embed.weight"].numpy())
    np.testing.assert_array_equal(weights["layers.0.attn.q.weight"],
                                  true["layers.0.attn.q.weight"].numpy())


# Blocks the HF families do not reach: each must run on llama.cpp like the PyTorch decoder.
ARCH_CASES = {
    "deepseek": ({"moe": {"experts": 4, "top_k": 2, "shared_experts": 1, "normalize_top_k": False}},
                 "deepseek"),
    "qwen3moe": ({"qk_norm": True, "head_dim": 16, "moe": {"experts": 4, "top_k": 2}}, "qwen3moe"),
    "qwen2_window": ({"qkv_bias": True, "sliding_window": {"size": 8}}, "granite_swa"),
    "even_window_scale": ({"sliding_window": {"size": 8, "layers": "even"}, "attn_scale": 0.2},
                          "granite_swa"),
    "yarn_attention_factor": ({"rope": {"scaling": {"kind": "yarn", "factor": 4.0,
                                                    "original_context_length": 16,
                                                    "attention_factor": 1.3}}}, "llama"),
    "mixtral_qkv_bias": ({"qkv_bias": True, "head_dim": 32, "moe": {"experts": 4, "top_k": 2}},
                         "llama"),
}


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_block_combinations_run_like_the_reference(builds, runners, case: str) -> None:
    model, arch = ARCH_CASES[case]
    decoder = builds.decoder(case, model)
    with torch.no_grad():  # std 0.1 weights: logits far from flat, so a wrong layout shows
        g = torch.Generator().manual_seed(0)
        for _, p in decoder.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    spec, artifact, build = builds.compile(case, model, "F32")
    assert artifact.details["architecture"] == arch
    runner = runners(artifact, build)
    tokens = np.asarray(PROMPT + PROMPT, np.int64)  # 40 positions: past every window
    runner.reset()
    got = runner.forward(tokens)
    ref = TorchRunner(decoder).forward(tokens)
    assert np.abs(ref).max() > 1.0
    assert np.abs(got - ref).max() <= 1e-4 + 1e-4 * np.abs(ref).max()


def test_weight_repacking_is_on_unless_the_cpu_has_amx(monkeypatch) -> None:
    """llama.cpp's own default (repacked weights) everywhere but on AMX hosts, where this
    llama-cpp-python build crashes; the environment variable decides either way."""
    import re

    from omnic.targets.gguf import runtime

    flags = " ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    monkeypatch.delenv("OMNIC_LLAMA_EXTRA_BUFTS", raising=False)
    assert runtime.extra_buffer_types() is (re.search(r"\samx_\w+", flags) is None)
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)
    assert runtime.extra_buffer_types() is False
    monkeypatch.setenv("OMNIC_LLAMA_EXTRA_BUFTS", "1")
    assert runtime.extra_buffer_types() is True
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    monkeypatch.setenv("OMNIC_LLAMA_EXTRA_BUFTS", "0")
    assert runtime.extra_buffer_types() is False
