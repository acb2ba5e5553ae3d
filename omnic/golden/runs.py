"""Driving a Runner over golden inputs: a greedy decode that keeps its logits, and a forced
path (the prompt in one call, then one token per call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from omnic.targets.base import Runner


def _forward(runner: "Runner", tokens: np.ndarray, vocab: int) -> np.ndarray:
    out = np.asarray(runner.forward(np.ascontiguousarray(tokens, dtype=np.int64)))
    if out.shape != (len(tokens), vocab):
        raise RuntimeError(f"forward returned logits of shape {list(out.shape)}, "
                           f"expected {[len(tokens), vocab]}")
    return out.astype(np.float32, copy=False)


def run_greedy(runner: "Runner", prompt: np.ndarray, steps: int, vocab: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decode: the prompt in one call, then one token per call.

    Returns:
        (tokens int64 [steps], logits float32 [T + steps - 1, vocab]) where logits row r is the
        distribution after position r; tokens[i] = argmax(logits[T - 1 + i]).

    The shared `omnic.runtime.generate.greedy` returns only the prompt logits; the decode-step
    logits are needed here, so this loop keeps them (same call pattern, same tie-break).
    """
    runner.reset()
    rows = [_forward(runner, prompt, vocab)]
    tokens = [int(rows[-1][-1].argmax())]
    for _ in range(steps - 1):
        rows.append(_forward(runner, np.asarray([tokens[-1]]), vocab))
        tokens.append(int(rows[-1][-1].argmax()))
    return np.asarray(tokens, dtype=np.int64), np.concatenate(rows, axis=0)


def run_forced(runner: "Runner", prompt: np.ndarray, continuation: np.ndarray, vocab: int
               ) -> np.ndarray:
    """Logits along prompt + continuation: the prompt in one call, then one token per call."""
    runner.reset()
    rows = [_forward(runner, prompt, vocab)]
    for tok in continuation:
        rows.append(_forward(runner, np.asarray([int(tok)]), vocab))
    return np.concatenate(rows, axis=0)
