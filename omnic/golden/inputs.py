"""Golden inputs: deterministic prompts derived from the spec alone (numpy, torch-free).

`cases` prompts of `prompt_tokens` ids each, drawn uniformly from the vocabulary minus the
tokenizer's special ids (bos, eos, pad: a runtime may treat those specially, e.g. stop on eos),
from `numpy.random.Generator(PCG64(golden.seed))`. The same spec gives the same prompts on every
machine; they are saved in each build (golden/inputs.npz) and in golden/<spec>/inputs.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class GoldenInputs:
    prompts: np.ndarray  # int64 [cases, prompt_tokens]
    decode_steps: int
    seed: int

    @property
    def cases(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompts.shape[1])


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
    if context_length is not None and prompt_tokens + decode_steps > context_length:
        raise ValueError(
            f"golden.prompt_tokens + golden.decode_steps = {prompt_tokens + decode_steps} exceeds "
            f"model.context_length = {context_length}"
        )
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64),
                           np.asarray(sorted(set(special_ids)), dtype=np.int64))
    if len(allowed) == 0:
        raise ValueError("every token id is special; no golden prompt can be drawn")
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, len(allowed), size=(cases, prompt_tokens), dtype=np.int64)
    return GoldenInputs(allowed[idx], int(decode_steps), int(seed))


def inputs_for_spec(spec, special_ids: Iterable[int] = ()) -> GoldenInputs:
    """Golden inputs of a resolved spec."""
    g = spec.golden
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
