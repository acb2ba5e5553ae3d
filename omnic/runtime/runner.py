"""What a loaded model looks like to everything that runs one: the torch reference, every target's
artifact, the greedy loop and the golden check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


class Runner(Protocol):
    """A loaded artifact: feed tokens, get logits. Position advances with every call."""

    def reset(self) -> None:
        """Forget the KV cache; the next call starts at position 0."""

    def forward(self, tokens: "np.ndarray") -> "np.ndarray":
        """Append int64 tokens [T] at the current position; return float32 logits [T, vocab]."""


class ComponentRunner(Protocol):
    """A loaded component artifact (encoder, projector, head): one tensor in, one tensor out.

    `target.load(artifact, build_dir)` returns one for an artifact whose `component` is not the
    decoder (see omnic/model/components.py for each component's I/O).
    """

    def run(self, x: "np.ndarray") -> "np.ndarray":
        """float32 input of the component's static shape (batch 1) -> float32 output."""
