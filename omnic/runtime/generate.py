"""Greedy decoding over any `Runner` (the reference and every compiled target share it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from omnic.runtime.runner import Runner


def greedy(
    runner: "Runner", prompt_ids: Sequence[int], steps: int, stop_ids: Iterable[int] = ()
) -> tuple[list[int], np.ndarray]:
    """Prefill `prompt_ids`, then take the argmax token `steps` times.

    Args:
        runner: any Runner; it is reset first.
        prompt_ids: the prompt (at least one token).
        steps: new tokens to generate.
        stop_ids: generation stops after emitting one of these (the stop token is included).

    Returns:
        The generated ids (without the prompt) and the prompt's logits, float32 [T, vocab].
    """
    if len(prompt_ids) == 0:
        raise ValueError("greedy() needs at least one prompt token")
    stop = set(stop_ids)
    runner.reset()
    prompt_logits = np.asarray(runner.forward(np.asarray(prompt_ids, dtype=np.int64)),
                               dtype=np.float32)
    last = prompt_logits[-1]
    out: list[int] = []
    for step in range(steps):
        token = int(np.argmax(last))  # ties go to the lowest id, as torch.argmax does
        out.append(token)
        if token in stop or step == steps - 1:
            break
        last = np.asarray(runner.forward(np.asarray([token], dtype=np.int64)), dtype=np.float32)[-1]
    return out, prompt_logits
