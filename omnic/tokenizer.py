"""Tokenizers: the built-in byte tokenizer and Hugging Face `tokenizer.json` files.

`load_tokenizer(spec, spec_dir)` returns an object with `encode(text)`, `decode(ids)`, `bos_id`,
`eos_ids`, `pad_id`, `vocab_size` and `save(dir)`, which writes a Hugging Face `tokenizer.json`
and `tokenizer_config.json` that every runtime (transformers, onnxruntime-genai, llama.cpp's
converter) can read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

BYTE_SPECIALS = ("<s>", "</s>", "<pad>")  # ids 256, 257, 258


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or does not fit the model."""


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then `<s>`=256, `</s>`=257, `<pad>`=258, `<unused_N>` to
    vocab_size."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 256 + len(BYTE_SPECIALS):
            raise TokenizerError(f"the byte tokenizer needs vocab_size >= 259, the model has "
                                 f"{vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id, self.pad_id = 256, 258
        self.eos_ids = [257]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, `<s>` first."""
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the byte ids; special and unused ids are skipped, bad UTF-8 replaced."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token, `<unused_N>` or placeholder (`<image>`: omnic.constants.
        Placeholders); None when this vocabulary has no such token."""
        from omnic.constants import Placeholders

        if token in Placeholders.BYTE_SLOTS:
            token = f"<unused_{Placeholders.BYTE_SLOTS[token]}>"
        names = self.tokens()[256:]
        return 256 + names.index(token) if token in names else None

    def tokens(self) -> list[str]:
        """Every token string by id."""
        unused = [f"<unused_{n}>" for n in range(self.vocab_size - 256 - len(BYTE_SPECIALS))]
        return [f"<0x{b:02X}>" for b in range(256)] + list(BYTE_SPECIALS) + unused

    def hf_tokenizer(self) -> Any:
        """This tokenizer as a `tokenizers.Tokenizer`: GPT-2-style byte-level BPE with no merges.

        Byte b is the GPT-2 alphabet character of b at id b, so every runtime that reads
        byte-level BPE (transformers, onnxruntime-genai's tokenizer, llama.cpp's "gpt2" model,
        ExecuTorch's HF tokenizer) maps each UTF-8 byte of any text to exactly its id. A
        `<0xNN>` byte-fallback vocabulary would be equivalent for transformers, but
        onnxruntime-genai's tokenizer maps every such token to -1.
        """
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE

        alphabet = gpt2_byte_alphabet()
        names = [alphabet[b] for b in range(256)] + self.tokens()[256:]
        tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(names)}, merges=[]))
        # use_regex=False: no word splitting is needed when every token is a single byte
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names[256:]])
        # add_special_tokens=True prepends <s>, like Llama's tokenizer and like `encode` here.
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", self.bos_id)]
        )
        return tok

    def save(self, directory: Path) -> list[Path]:
        """Write tokenizer.json and tokenizer_config.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokenizer.json"
        self.hf_tokenizer().save(str(path))
        config = {
            "tokenizer_class": "GPT2Tokenizer",  # onnxruntime-genai picks its BPE decoder by class
            "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
            "add_bos_token": True, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        cfg_path = directory / "tokenizer_config.json"
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
        return [path, cfg_path]


def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte value.

    # ref: https://github.com/openai/gpt-2/blob/master/src/encoder.py (bytes_to_unicode)
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path}: not valid JSON: {err}") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class HFTokenizer:
    """A Hugging Face `tokenizer.json` read with the `tokenizers` library.

    Special ids: eos from generation_config.json, then config.json, then tokenizer_config.json
    (all distinct ids kept, in that order); bos and pad from config.json, else
    tokenizer_config.json.
    """

    def __init__(self, directory: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError("the tokenizers library is missing: "
                                 "install omnic[torch]") from None
        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer.json in {self.directory}")
        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        tcfg = _read_json(self.directory / "tokenizer_config.json")
        cfg = _read_json(self.directory / "config.json")
        cfg = {**(cfg.get("text_config") or {}), **cfg}  # a multimodal config's decoder ids
        gcfg = _read_json(self.directory / "generation_config.json")

        def by_text(key: str) -> list[int]:
            text = _token_text(tcfg.get(key))
            tid = self._tok.token_to_id(text) if text else None
            return [] if tid is None else [tid]

        eos = (_as_list(gcfg.get("eos_token_id")) + _as_list(cfg.get("eos_token_id"))
               + by_text("eos_token"))
        self.eos_ids = list(dict.fromkeys(eos))
        bos = (_as_list(gcfg.get("bos_token_id")) or _as_list(cfg.get("bos_token_id"))
               or by_text("bos_token"))
        self.bos_id = bos[0] if bos else None
        pad = _as_list(cfg.get("pad_token_id")) or by_text("pad_token")
        self.pad_id = pad[0] if pad else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the tokenizer's post-processor runs."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` in the vocabulary (added tokens included), or None."""
        return self._tok.token_to_id(token)

    def save(self, directory: Path) -> list[Path]:
        """Copy tokenizer.json and tokenizer_config.json (and special_tokens_map.json) into
        `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = self.directory / name
            if src.is_file():
                out.append(Path(shutil.copyfile(src, directory / name)))
        return out


def load_tokenizer(spec: "ResolvedSpec", spec_dir: Path) -> ByteTokenizer | HFTokenizer:
    """The tokenizer a spec names; `huggingface` paths are relative to `spec_dir`."""
    tok = spec.tokenizer
    if tok.kind == "byte":
        return ByteTokenizer(spec.model.vocab_size)
    path = Path(tok.path)
    if not path.is_absolute():
        path = Path(spec_dir) / path
    out = HFTokenizer(path)
    if out.vocab_size > spec.model.vocab_size:
        raise TokenizerError(
            f"{path}: tokenizer has {out.vocab_size} tokens, more than the model's vocab_size "
            f"{spec.model.vocab_size}"
        )
    return out
