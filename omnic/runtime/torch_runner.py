"""The PyTorch reference runner: a built `Decoder` behind the `Runner` protocol."""

from __future__ import annotations

import numpy as np
import torch


class TorchRunner:
    """Feeds tokens through `Decoder.forward` with its static KV cache (batch 1).

    Implements `omnic.targets.base.Runner`: numpy int64 tokens [T] in, float32 logits [T, vocab]
    out; the position advances by T with every call, `reset()` starts again at 0.
    """

    def __init__(self, decoder: torch.nn.Module, positions: int | None = None) -> None:
        """Args: decoder: the model; positions: the most positions this runner will see (the
        static cache's length; default the model's context_length). A golden check of 24
        positions needs no 32768-position cache (805 MB per runner at Qwen2.5-0.5B's shape)."""
        self.decoder = decoder
        c = decoder.config
        self.context_length = c.context_length if positions is None else min(
            int(positions), c.context_length)
        self.reset()

    def reset(self) -> None:
        # a cache cut to `positions`: masked slots add zeros, so only the reductions' rounding
        # differs from a full-length cache (1.8e-7 measured)
        dtype = next(self.decoder.parameters()).dtype  # a float64 reference keeps a float64 cache
        self.k_cache, self.v_cache = self.decoder.empty_cache(batch=1, dtype=dtype,
                                                              length=self.context_length)
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(-1))
        t = ids.shape[0]
        if self.position + t > self.context_length:
            raise ValueError(
                f"position {self.position} + {t} tokens exceeds context_length "
                f"{self.context_length}"
            )
        pos = torch.arange(self.position, self.position + t, dtype=torch.int64)
        with torch.no_grad():
            logits, self.k_cache, self.v_cache = self.decoder(ids[None], pos, self.k_cache,
                                                              self.v_cache)
        self.position += t
        return logits[0].to(torch.float32).numpy()
