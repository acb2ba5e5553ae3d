"""The PyTorch reference runner: a built `Decoder` behind the `Runner` protocol."""

from __future__ import annotations

import numpy as np
import torch


class TorchRunner:
    """Feeds tokens through `Decoder.forward` with its static KV cache (batch 1).

    Implements `omnic.targets.base.Runner`: numpy int64 tokens [T] in, float32 logits [T, vocab]
    out; the position advances by T with every call, `reset()` starts again at 0.
    """

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.context_length = decoder.config.context_length
        self.reset()

    def reset(self) -> None:
        self.k_cache, self.v_cache = self.decoder.empty_cache(batch=1)
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(-1))
        t = ids.shape[0]
        if self.position + t > self.context_length:
            raise ValueError(
                f"position {self.position} + {t} tokens exceeds context_length {self.context_length}"
            )
        pos = torch.arange(self.position, self.position + t, dtype=torch.int64)
        with torch.no_grad():
            logits, self.k_cache, self.v_cache = self.decoder(ids[None], pos, self.k_cache, self.v_cache)
        self.position += t
        return logits[0].to(torch.float32).numpy()
