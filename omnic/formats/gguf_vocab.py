"""The spec's tokenizer as `tokenizer.ggml.*` metadata that llama.cpp tokenizes identically, and
back: a GGUF vocabulary as the tokenizer.json that tokenizes like llama.cpp (`save_tokenizer`).

Three shapes, mirroring convert_hf_to_gguf's vocab classes
(ref: https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/vocab.py):

- Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM...): model "gpt2", tokens in the GPT-2 byte-to-
  unicode alphabet, merges, and the pre-tokenizer llama.cpp must use (`tokenizer.ggml.pre`),
  recognised from tokenizer.json's split regex (llama.cpp warns and degrades without one).
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma): model "llama", `<0xXX>`
  tokens typed BYTE, scores = -(rank of the merge that makes the token) so llama.cpp's SPM
  tokenizer merges in the same order as the BPE merges.
- omnic's byte tokenizer (ids 0..255 are the bytes, then `<s>`, `</s>`, `<pad>`, `<unused_N>`):
  written as model "gpt2" whose 256 base tokens are the byte alphabet and no merge ever fires.
  Not as "llama": llama.cpp's SPM tokenizer always rewrites ' ' as U+2581 before lookup
  (llama-vocab.cpp `escape_whitespaces`, no key turns it off), so a space would become the three
  byte tokens of U+2581 instead of byte 0x20.

Torch-free: tokenizer.json is read as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

# Token types (gguf-py constants.TokenType; llama.h LLAMA_TOKEN_TYPE_*).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of tokenizer.json pre-tokenizers -> llama.cpp pre-tokenizer names. The regexes are
# the "original regex from tokenizer.json" comments in llama-vocab.cpp (llm_tokenizer_bpe).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
           r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SPLIT_REGEX_PRE = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2", _GPT2: "gpt-2"}


class TokenizerError(ValueError):
    """The tokenizer cannot be written so that llama.cpp tokenizes like the source."""


@dataclass
class GgufVocab:
    """Everything `tokenizer.ggml.*` holds."""

    model: str  # "gpt2" | "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (one copy, in omnic.tokenizer)."""
    from omnic.tokenizer import gpt2_byte_alphabet

    return gpt2_byte_alphabet()


def _pad(vocab: GgufVocab, size: int) -> None:
    """Pad to the embedding's row count as convert_hf_to_gguf does ([PAD{i}], UNUSED)."""
    if len(vocab.tokens) > size:
        raise TokenizerError(f"the tokenizer has {len(vocab.tokens)} tokens but model.vocab_size "
                             f"is {size}")
    for i in range(len(vocab.tokens), size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)


def _bytes_as_gpt2(names: list[str], types: list[int], bos: int | None, eos: int | None,
                   pad: int | None, add_bos: bool) -> GgufVocab:
    """A vocabulary whose only text tokens are single bytes `<0xXX>`, as a byte-level "gpt2" vocab.

    Each `<0xXX>` becomes the GPT-2 alphabet character of byte XX at the same id (type NORMAL),
    so llama.cpp's byte-level BPE maps every byte of any text to exactly that id; the other
    tokens (specials, unused) keep their names and types.
    """
    alphabet = bytes_to_unicode()
    tokens, out_types = [], []
    for name, ty in zip(names, types):
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", name)
        tokens.append(alphabet[int(m.group(1), 16)] if m else name)
        out_types.append(NORMAL if m else ty)
    # llama.cpp refuses a BPE vocab without merges. This one pairs two multi-character special
    # tokens, which the text splitter never produces as symbols, so it never fires.
    specials = [t for t, ty in zip(tokens, out_types) if ty != NORMAL and len(t) > 1]
    if len(specials) < 2:
        raise TokenizerError("a byte vocabulary needs two special tokens to anchor llama.cpp's "
                             "mandatory merges list")
    merges = [f"{specials[0]} {specials[1]}"]
    return GgufVocab("gpt2", tokens, out_types, None, merges, "gpt-2", bos, eos, pad,
                     add_bos=add_bos)


def byte_vocab(spec: "ResolvedSpec", spec_dir: Path) -> GgufVocab:
    """omnic's byte tokenizer (ids 0..255 the bytes, then <s>, </s>, <pad>, <unused_N>)."""
    from omnic.tokenizer import load_tokenizer

    tok = load_tokenizer(spec, spec_dir)
    names = tok.tokens()
    types = [NORMAL if i < 256 else UNUSED if n.startswith("<unused") else CONTROL
             for i, n in enumerate(names)]
    # add_bos: omnic's tokenizer (like Llama's) prepends <s> when asked for special tokens
    vocab = _bytes_as_gpt2(names, types, tok.bos_id, tok.eos_ids[0], tok.pad_id, add_bos=True)
    _pad(vocab, spec.model.vocab_size)
    return vocab


def hf_vocab(spec: "ResolvedSpec", spec_dir: Path) -> GgufVocab:
    """A Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json)."""
    from omnic.tokenizer import load_tokenizer

    path = Path(spec.tokenizer.path)  # type: ignore[union-attr]
    if not path.is_absolute():
        path = Path(spec_dir) / path
    data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    config: dict[str, Any] = {}
    if (path / "tokenizer_config.json").exists():
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"tokenizer model {model.get('type')!r} is not supported for GGUF "
                             "(BPE only: byte-level or SentencePiece-style with byte fallback)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    n = max([*by_id, *added]) + 1
    if spec.model.vocab_size < n:
        raise TokenizerError(f"tokenizer ids reach {n - 1} but model.vocab_size is "
                             f"{spec.model.vocab_size}")
    byte_fallback = bool(model.get("byte_fallback"))
    tokens, types = [], []
    for i in range(n):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif i in by_id:
            text = by_id[i]
            tokens.append(text)
            is_byte = byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text)
            types.append(BYTE if is_byte else NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)

    tok = load_tokenizer(spec, spec_dir)  # bos/eos/pad as omnic resolves them
    ids = dict(bos=tok.bos_id, eos=tok.eos_ids[0] if tok.eos_ids else None, pad=tok.pad_id)
    add_bos = bool(config.get("add_bos_token", False))
    template = config.get("chat_template")
    template = template if isinstance(template, str) else None
    unk = model.get("unk_token")
    unk_id = tokens.index(unk) if unk in tokens else None

    if byte_fallback and not _uses_metaspace(data):
        # Raw-UTF-8 BPE with byte fallback (omnic's byte tokenizer saved as tokenizer.json is
        # one): llama.cpp's SPM tokenizer would rewrite spaces as U+2581 first. With no merges
        # every byte is its own token, which the byte-level "gpt2" form reproduces exactly.
        if merges or any(ty == NORMAL for ty in types):
            raise TokenizerError("byte-fallback BPE over raw UTF-8 (no SentencePiece '▁') with "
                                 "multi-byte tokens has no llama.cpp tokenizer that matches it")
        vocab = _bytes_as_gpt2(tokens, types, ids["bos"], ids["eos"], ids["pad"], add_bos)
        vocab.chat_template = template
    elif byte_fallback:
        # SentencePiece-style: score = -(rank of the merge producing the token); llama.cpp's SPM
        # tokenizer merges the highest-scoring bigram first, which is BPE's rank order.
        rank: dict[str, int] = {}
        for r, m in enumerate(merges):
            left, right = m.split(" ", 1)
            rank.setdefault(left + right, r)
        scores = [-float(rank.get(t, 0)) if ty == NORMAL else -1000.0
                  for t, ty in zip(tokens, types)]
        vocab = GgufVocab("llama", tokens, types, scores, [], None, ids["bos"], ids["eos"],
                          ids["pad"], unk_id, add_bos, bool(config.get("add_eos_token", False)),
                          _space_prefix(data), template)
    elif not merges and all(len(t) == 1 for t, ty in zip(tokens, types) if ty == NORMAL):
        # Byte-level BPE whose text tokens are single bytes and which has no merges (omnic's
        # byte tokenizer saved as tokenizer.json is one): no word split can change its output,
        # so it is written like the byte tokenizer, whatever its pre-tokenizer's regex.
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        names = [f"<0x{byte_of[t]:02X}>" if ty == NORMAL and t in byte_of else t
                 for t, ty in zip(tokens, types)]
        vocab = _bytes_as_gpt2(names, types, ids["bos"], ids["eos"], ids["pad"], add_bos)
        vocab.chat_template = template
    else:
        vocab = GgufVocab("gpt2", tokens, types, None, merges, _pre_tokenizer(data), ids["bos"],
                          ids["eos"], ids["pad"], None, add_bos,
                          bool(config.get("add_eos_token", False)), None, template)
    _pad(vocab, spec.model.vocab_size)
    return vocab


def _uses_metaspace(data: dict[str, Any]) -> bool:
    """Whether spaces become '▁' before the model (a Metaspace pre-tokenizer or a Replace
    normalizer)."""
    pre = data.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    if any(p.get("type") == "Metaspace" for p in pres):
        return True
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm else []
    return any(st.get("type") == "Replace" and st.get("content") == "\u2581"
               for st in steps)


def _space_prefix(data: dict[str, Any]) -> bool:
    """Whether the SentencePiece-style tokenizer prepends '▁' (Llama 2 yes, Gemma no)."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never" and pre.get("add_prefix_space", True)
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm else []
    return any(s.get("type") == "Prepend" for s in steps)


def _pre_tokenizer(data: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level tokenizer.json."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"  # \p{N} then the GPT-2 regex (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in SPLIT_REGEX_PRE:
            return SPLIT_REGEX_PRE[regex]
    raise TokenizerError(f"pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp knows "
                         "(gpt-2, llama-bpe, qwen2, smollm are recognised)")


def vocab_for(spec: "ResolvedSpec", spec_dir: Path) -> GgufVocab:
    """The GGUF vocabulary of the spec's tokenizer."""
    if spec.tokenizer.kind == "byte":
        return byte_vocab(spec, spec_dir)
    return hf_vocab(spec, spec_dir)


def write_vocab(writer: Any, vocab: GgufVocab) -> None:
    """Add the `tokenizer.ggml.*` keys to a GGUFWriter."""
    w = writer
    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    for ident, add in ((vocab.bos_id, w.add_bos_token_id), (vocab.eos_id, w.add_eos_token_id),
                       (vocab.pad_id, w.add_pad_token_id), (vocab.unk_id, w.add_unk_token_id)):
        if ident is not None:
            add(ident)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


# --- the other way: a GGUF vocabulary as tokenizer.json (omnic.importers.gguf) ------------------
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}


def _split_then_bytes(regex: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]}


# llama.cpp pre-tokenizer name -> the tokenizer.json pre-tokenizer that splits text the same way
# (`_pre_tokenizer` reads each back to its name). llama.cpp's "default" BPE split has four
# regexes of its own and no tokenizer.json counterpart.
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": _split_then_bytes(_LLAMA3),
    "qwen2": _split_then_bytes(_QWEN2),
}
# Pre-tokenizers whose BPE takes a word that is itself a token whole, before any merge
# (llama-vocab.cpp: `ignore_merges` for LLAMA_VOCAB_PRE_TYPE_LLAMA3; tokenizer.json's BPE
# `ignore_merges`, as Llama 3's own tokenizer.json sets it).
IGNORE_MERGES = frozenset({"llama-bpe"})


def hf_tokenizer_of(vocab: GgufVocab) -> Any:
    """A `tokenizers.Tokenizer` that tokenizes like llama.cpp does with this byte-level BPE
    vocabulary.

    Raises:
        TokenizerError: not a byte-level BPE ("gpt2") vocabulary, or a pre-tokenizer with no
            tokenizer.json counterpart.
    """
    from tokenizers import AddedToken, Tokenizer, processors
    from tokenizers.models import BPE

    if vocab.model != "gpt2":
        raise TokenizerError(f"tokenizer model {vocab.model!r}: only byte-level BPE ('gpt2') "
                             "vocabularies are converted")
    if vocab.pre not in PRE_TOKENIZERS:
        raise TokenizerError(f"llama.cpp pre-tokenizer {vocab.pre!r} has no tokenizer.json "
                             f"counterpart here (known: {', '.join(PRE_TOKENIZERS)})")
    ids: dict[str, int] = {}
    for i, token in enumerate(vocab.tokens):
        ids.setdefault(token, i)
    # A merge whose result is no token cannot fire in llama.cpp (the anchor merge of byte
    # vocabularies pairs two specials, which the splitter never yields); tokenizers refuses it.
    merges = [(a, b) for a, b in (m.split(" ", 1) for m in vocab.merges) if a + b in ids]
    tok = Tokenizer(BPE(vocab=ids, merges=merges, ignore_merges=vocab.pre in IGNORE_MERGES))
    data = json.loads(tok.to_str())
    data["pre_tokenizer"] = PRE_TOKENIZERS[vocab.pre]
    data["decoder"] = {**_BYTE_LEVEL}
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(vocab.tokens, vocab.types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(vocab.tokens, vocab.types) if ty == USER_DEFINED])
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)])
    return tok


def save_tokenizer(vocab: GgufVocab, directory: Path) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json for a GGUF vocabulary into `directory`."""
    directory = Path(directory)
    tok = hf_tokenizer_of(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tok.save(str(path))

    def text(ident: int | None) -> str | None:
        return vocab.tokens[ident] if ident is not None and ident < len(vocab.tokens) else None

    config = {
        "tokenizer_class": "GPT2Tokenizer",  # onnxruntime-genai picks its BPE decoder by class
        "bos_token": text(vocab.bos_id), "eos_token": text(vocab.eos_id),
        "pad_token": text(vocab.pad_id), "unk_token": text(vocab.unk_id),
        "add_bos_token": vocab.add_bos, "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    cfg_path = directory / "tokenizer_config.json"
    cfg_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    return [path, cfg_path]
