"""Golden inputs: deterministic prompts derived from the spec alone (numpy, torch-free).

`cases` prompts of `prompt_tokens` ids each:
- with a Hugging Face tokenizer (a trained model), natural text: the passages bundled in
  golden/texts/ (English, French, German, Spanish, Japanese, Chinese, Russian and a Python
  snippet) joined and encoded by the model's own tokenizer, and `cases` windows taken at evenly
  spaced starts, so the prompts run from English prose to code. A real model never sees uniform
  random ids; on text its logits are as peaked as in use, and perplexity means something.
- with the byte tokenizer (random-weight specs), ids drawn uniformly from the vocabulary minus
  the tokenizer's special ids (bos, eos, pad: a runtime may treat those specially, e.g. stop on
  eos), from `numpy.random.Generator(PCG64(golden.seed))`.
The same spec gives the same prompts on every machine; they are saved in each build
(golden/inputs.npz) and in golden/<spec>/inputs.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class GoldenInputs:
    prompts: np.ndarray  # int64 [cases, prompt_tokens]
    decode_steps: int
    seed: int
    text: bool = False  # natural text (perplexity on the prompts is meaningful), not random ids

    @property
    def cases(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompts.shape[1])


def _check_fits(prompt_tokens: int, decode_steps: int, context_length: int | None) -> None:
    if context_length is not None and prompt_tokens + decode_steps > context_length:
        raise ValueError(
            f"golden.prompt_tokens + golden.decode_steps = {prompt_tokens + decode_steps} exceeds "
            f"model.context_length = {context_length}"
        )


def make_inputs(
    *, cases: int, prompt_tokens: int, decode_steps: int, seed: int, vocab_size: int,
    special_ids: Iterable[int] = (), context_length: int | None = None,
) -> GoldenInputs:
    """Draw the golden prompts.

    Args:
        cases, prompt_tokens, decode_steps, seed: the spec's `golden` block.
        vocab_size: decoder vocabulary size.
        special_ids: token ids never drawn (bos, eos, pad...).
        context_length: when given, prompt_tokens + decode_steps must fit in it.

    Raises:
        ValueError: the prompts and decode steps do not fit the context, or no id is left.
    """
    _check_fits(prompt_tokens, decode_steps, context_length)
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64),
                           np.asarray(sorted(set(special_ids)), dtype=np.int64))
    if len(allowed) == 0:
        raise ValueError("every token id is special; no golden prompt can be drawn")
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, len(allowed), size=(cases, prompt_tokens), dtype=np.int64)
    return GoldenInputs(allowed[idx], int(decode_steps), int(seed))


TEXTS = Path(__file__).parent / "texts"


def golden_text() -> str:
    """The bundled passages, joined by blank lines in file-name order."""
    return "\n\n".join(p.read_text(encoding="utf-8").strip()
                        for p in sorted(TEXTS.glob("*.txt")))


def text_inputs(ids: Sequence[int], *, cases: int, prompt_tokens: int, decode_steps: int,
                seed: int) -> GoldenInputs:
    """`cases` windows of `prompt_tokens` ids of an encoded text, at evenly spaced starts.

    Raises:
        ValueError: the text is shorter than one prompt.
    """
    ids = np.asarray(ids, dtype=np.int64)
    room = len(ids) - prompt_tokens
    if room < 0:
        raise ValueError(f"golden.prompt_tokens = {prompt_tokens} exceeds the {len(ids)} tokens "
                         "of omnic's golden text for this tokenizer")
    starts = [round(c * room / max(1, cases - 1)) for c in range(cases)]
    prompts = np.stack([ids[s:s + prompt_tokens] for s in starts])
    return GoldenInputs(prompts, int(decode_steps), int(seed), text=True)


def inputs_for_spec(spec, special_ids: Iterable[int] = (), tokenizer=None) -> GoldenInputs:
    """Golden inputs of a resolved spec: text encoded by `tokenizer` when the spec has a Hugging
    Face tokenizer and it is given, random ids otherwise."""
    g = spec.golden
    if tokenizer is not None and spec.tokenizer.kind == "huggingface":
        _check_fits(g.prompt_tokens, g.decode_steps, spec.model.context_length)
        return text_inputs(tokenizer.encode(golden_text()), cases=g.cases,
                           prompt_tokens=g.prompt_tokens, decode_steps=g.decode_steps,
                           seed=g.seed)
    return make_inputs(
        cases=g.cases, prompt_tokens=g.prompt_tokens, decode_steps=g.decode_steps, seed=g.seed,
        vocab_size=spec.model.vocab_size, special_ids=special_ids,
        context_length=spec.model.context_length,
    )


def special_ids_of(tokenizer) -> list[int]:
    """bos, eos and pad ids of a tokenizer object (any that exist)."""
    ids = [getattr(tokenizer, "bos_id", None), getattr(tokenizer, "pad_id", None)]
    ids += list(getattr(tokenizer, "eos_ids", None) or [])
    return sorted({int(i) for i in ids if i is not None})
