"""An independent measure for the tests of `quantization: auto`: a decoder fake-quantized by
hand, and the mean KL(fp32 || quantized) over token windows in numpy (not omnic's meter)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np


def _log_probs(model: Any, tokens: list[int]) -> np.ndarray:
    import torch

    k, v = model.empty_cache(1)
    with torch.no_grad():
        out, _, _ = model(torch.as_tensor(tokens)[None], torch.arange(len(tokens)), k, v)
    x = out[0].double().numpy()
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def window_kld(decoder: Any, quantized: Any, windows: list[list[int]]) -> float:
    """Mean KL(decoder || quantized) over every position of every window, each from 0."""
    kls = []
    for w in windows:
        p, q = _log_probs(decoder, w), _log_probs(quantized, w)
        kls.append(np.maximum((np.exp(p) * (p - q)).sum(-1), 0))
    return float(np.concatenate(kls).mean())


def fake_quantized(decoder: Any, schemes: dict) -> Any:
    """A copy of `decoder` with every weight rounded as `schemes` (name -> TensorScheme) says."""
    import torch

    from omnic.quant.reference import fake_quantize

    q = copy.deepcopy(decoder)
    with torch.no_grad():
        for name, p in q.named_parameters():
            ts = schemes.get(name)
            if ts is not None and ts.scheme != "fp32":
                p.copy_(torch.from_numpy(fake_quantize(p.numpy(), ts.scheme, ts.group_size,
                                                       ts.symmetric)))
    return q
