"""Tokenizers: the byte tokenizer, its tokenizer.json as transformers reads it, and the special
ids of Hugging Face directories."""

from __future__ import annotations

import json

import pytest

from omnic.tokenizer import ByteTokenizer, HFTokenizer, TokenizerError, load_tokenizer

TEXT = "Grüße, 世界! tab\tnew\nline <s> end"


def test_byte_tokenizer_ids():
    tok = ByteTokenizer(300)
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.encode("a", add_special_tokens=True) == [256, 97]
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (256, [257], 258)
    assert tok.decode([256, *ids, 257, 299]) == TEXT
    with pytest.raises(TokenizerError, match="vocab_size >= 259"):
        ByteTokenizer(258)


def test_saved_byte_tokenizer_is_read_by_transformers(tmp_path):
    from transformers import AutoTokenizer

    tok = ByteTokenizer(300)
    written = tok.save(tmp_path)
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    from gguf.vocab import bytes_to_unicode  # an independent copy of GPT-2's byte alphabet

    alphabet = bytes_to_unicode()
    assert all(vocab[alphabet[b]] == b for b in range(256)) and vocab["<s>"] == 256
    assert vocab["</s>"] == 257 and vocab["<pad>"] == 258 and vocab["<unused_40>"] == 299
    assert len(vocab) == 300
    hf = AutoTokenizer.from_pretrained(tmp_path)
    plain = "Grüße, 世界! tab\tnew\nline"
    assert hf(plain, add_special_tokens=False)["input_ids"] == tok.encode(plain)
    assert hf(plain)["input_ids"] == tok.encode(plain, add_special_tokens=True)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (256, 257, 258)
    assert hf.decode(tok.encode(plain)) == plain


def test_hf_special_ids_from_config_files(tmp_path):
    ByteTokenizer(300).save(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"bos_token_id": 256, "eos_token_id": [257, 280]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 290}))
    tok = HFTokenizer(tmp_path)
    assert tok.eos_ids == [290, 257, 280]  # generation_config first, all distinct ids kept
    assert tok.bos_id == 256 and tok.pad_id == 258 and tok.vocab_size == 300
    assert tok.decode(tok.encode("héllo")) == "héllo"
    copy = tmp_path / "copy"
    tok.save(copy)
    assert HFTokenizer(copy).encode("héllo") == tok.encode("héllo")


def test_load_tokenizer_from_spec(tmp_path, make_spec):
    ByteTokenizer(400).save(tmp_path / "tok")
    spec = make_spec({"vocab_size": 400}, tokenizer={"kind": "huggingface", "path": "tok"})
    assert load_tokenizer(spec, tmp_path).vocab_size == 400
    small = make_spec({"vocab_size": 300}, tokenizer={"kind": "huggingface", "path": "tok"})
    with pytest.raises(TokenizerError, match="more than the model's vocab_size"):
        load_tokenizer(small, tmp_path)
    assert isinstance(load_tokenizer(make_spec(), tmp_path), ByteTokenizer)
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer(tmp_path)
