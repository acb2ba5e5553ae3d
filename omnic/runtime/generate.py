"""Greedy decoding over any `Runner` (the reference and every compiled target share it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from omnic.runtime.runner import Runner


class BadLogits(RuntimeError):
    """A runner returned logits nothing can be decoded from: empty, of the wrong shape, or with
    NaN / inf values (a runtime or artifact fault, not bad input)."""


def checked_logits(logits: object, tokens: int, vocab: int | None = None) -> np.ndarray:
    """`logits` as float32 [tokens, vocab], or BadLogits saying what is wrong with them.

    Args:
        logits: what `Runner.forward` returned for `tokens` input tokens.
        tokens: how many tokens were fed (one row of logits each).
        vocab: the expected row length; None accepts any non-zero length.
    """
    try:
        arr = np.asarray(logits, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise BadLogits(f"the runtime returned {type(logits).__name__}, not logits: "
                        f"{err}") from None
    want = f"[{tokens}, {vocab if vocab is not None else 'vocab'}]"
    if arr.size == 0:
        raise BadLogits(f"the runtime returned empty logits (shape {list(arr.shape)}, "
                        f"expected {want})")
    if arr.ndim != 2 or arr.shape[0] != tokens or (vocab is not None and arr.shape[1] != vocab):
        raise BadLogits(f"the runtime returned logits of shape {list(arr.shape)}, "
                        f"expected {want}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise BadLogits(f"the runtime returned {int(arr.size - finite.sum())} non-finite "
                        f"logit(s) (NaN or inf) of {arr.size} ({list(arr.shape)})")
    return arr


def greedy(
    runner: "Runner", prompt_ids: Sequence[int], steps: int, stop_ids: Iterable[int] = (),
    vocab: int | None = None,
) -> tuple[list[int], np.ndarray]:
    """Prefill `prompt_ids`, then take the argmax token `steps` times.

    Args:
        runner: any Runner; it is reset first.
        prompt_ids: the prompt (at least one token).
        steps: new tokens to generate.
        stop_ids: generation stops after emitting one of these (the stop token is included).
        vocab: the vocabulary size every row of logits must have (None: any).

    Returns:
        The generated ids (without the prompt) and the prompt's logits, float32 [T, vocab].

    Raises:
        BadLogits: a forward call returned empty, wrongly shaped or non-finite logits (an argmax
            over them would pick a meaningless token and print it as if it were text).
    """
    if len(prompt_ids) == 0:
        raise ValueError("greedy() needs at least one prompt token")
    stop = set(stop_ids)
    runner.reset()
    prompt_logits = checked_logits(runner.forward(np.asarray(prompt_ids, dtype=np.int64)),
                                   len(prompt_ids), vocab)
    last = prompt_logits[-1]
    out: list[int] = []
    for step in range(steps):
        token = int(np.argmax(last))  # ties go to the lowest id, as torch.argmax does
        out.append(token)
        if token in stop or step == steps - 1:
            break
        last = checked_logits(runner.forward(np.asarray([token], dtype=np.int64)), 1, vocab)[-1]
    return out, prompt_logits
