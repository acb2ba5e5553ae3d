"""Hugging Face tokenizers written as tokenizer.ggml.*: llama.cpp must split text into the same
ids as the `tokenizers` library does with the original tokenizer.json (the reference).

Tokenizers are trained here on a few sentences (nothing downloaded): a GPT-2 style byte-level BPE
and a Llama-2 style SentencePiece BPE with byte fallback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
tokenizers = pytest.importorskip("tokenizers")

from omnic.spec import ResolvedSpec  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello again, world. 12345 and 678.",
    "llama.cpp reads GGUF files; omnic writes them.",
    "Tokenizers split text into pieces, pieces into ids.",
] * 20
TEXTS = ["Hello world!", "the lazy fox, 2024 and 31415", "  leading spaces and\nnewlines\n",
         "unseen: ÿ ž 漢字 ✓", "GGUF"]
DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
MODEL = {"vocab_size": 512, "d_model": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}


def _byte_level(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        '{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": false}')
    return out


def _sentencepiece_style(out: Path) -> Path:
    """Llama-2 layout: <unk> <s> </s>, <0x00>..<0xFF>, then BPE pieces with '▁' for spaces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=200, show_progress=False)
    base.train_from_iterator(["▁" + s for s in CORPUS], trainer)
    trained = base.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in __import__("json").loads(base.to_str())["model"]["merges"]]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>",
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}')
    return out


def _compile(tok_dir: Path, build: Path) -> Path:
    import torch  # noqa: F401 - the builder

    from omnic.model import build_model
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.targets.base import get_target

    spec = ResolvedSpec.model_validate({
        "omnic": 1, "name": "tok", "device": DEVICE, "model": MODEL,
        "tokenizer": {"kind": "huggingface", "path": str(tok_dir)},
        "quantization": {"weights": {"scheme": "fp32"}}, "targets": {"gguf": {"file_type": "F32"}}})
    (artifact,) = get_target("gguf").lower(Program(spec, build, build_model(spec, build),
                                                  quant_plan=tensor_schemes(spec)), build / "gguf")
    return build / artifact.path


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece_style"])
def test_llama_cpp_tokenizes_like_tokenizers(kind: str, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from omnic.targets.gguf.runtime import capture_llama_log, warnings_of
    from omnic.targets.gguf.write import metadata

    make = _byte_level if kind == "byte_level" else _sentencepiece_style
    tok_dir = make(tmp_path / "tok")
    path = _compile(tok_dir, tmp_path / "build")
    meta = metadata(path, ["tokenizer.ggml.model", "tokenizer.ggml.pre"])
    assert meta == ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}
                    if kind == "byte_level" else {"tokenizer.ggml.model": "llama"})
    hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    with capture_llama_log() as records:
        llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        # (a vocab-only load has n_ctx_train 0, so llama-cpp-python's context warns about it)
        assert [w for w in warnings_of(records) if not w.startswith("llama_context")] == []
        for text in TEXTS:
            want = hf.encode(text, add_special_tokens=False).ids
            got = llama.tokenize(text.encode(), add_bos=False, special=False)
            assert got == want, (text, got, want)
            text_back = llama.detokenize(want).decode()
            if kind == "sentencepiece_style":  # llama-cpp-python's detokenize keeps the '▁' prefix
                text_back = text_back.removeprefix(" ")
            assert text_back == hf.decode(want, skip_special_tokens=False)
        assert np.asarray(want).max() > 3  # real pieces, not only fallbacks
    finally:
        llama.close()


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    import json

    from omnic.formats.gguf_vocab import TokenizerError, hf_vocab

    tok_dir = _byte_level(tmp_path / "tok")
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[a-z]+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (tok_dir / "tokenizer.json").write_text(json.dumps(data))
    spec = ResolvedSpec.model_validate({
        "omnic": 1, "name": "tok", "device": DEVICE, "model": MODEL,
        "tokenizer": {"kind": "huggingface", "path": str(tok_dir)},
        "quantization": {}, "targets": {"gguf": {}}})
    with pytest.raises(TokenizerError, match="pre-tokenizer"):
        hf_vocab(spec, tmp_path)
