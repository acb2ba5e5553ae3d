"""The quantization-exact reference's model: the decoder with an artifact's stored weights, and
how far those weights are from the model's own."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from omnic.golden import metrics as M

_NMSE_CHUNK = 1 << 22  # elements; float64 temporaries of 32 MiB instead of 5 x the tensor


def weight_nmse(w: np.ndarray, true: np.ndarray) -> float:
    """M.nmse of a weight tensor, in chunks when it is large: the float64 temporaries of the
    whole-array form come to ~8 GB for Llama-3.2-1B's embedding (262 M values)."""
    if w.size <= _NMSE_CHUNK:
        return M.nmse(w, true)
    a, r = w.reshape(-1), true.reshape(-1)
    num = den = 0.0
    for start in range(0, a.size, _NMSE_CHUNK):
        x = a[start:start + _NMSE_CHUNK].astype(np.float64)
        y = r[start:start + _NMSE_CHUNK].astype(np.float64)
        den += float((y * y).sum())
        num += float(((x - y) ** 2).sum())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def with_weights(decoder: Any, weights: Mapping[str, Any]) -> Any:
    """A copy of `decoder` whose parameters named in `weights` are those arrays, shared rather
    than copied; its other parameters are the decoder's own objects (inference never writes
    them) and only modules and buffers are duplicated. The exact reference then costs one set of
    reference weights instead of a deep copy plus a copy of the weights (at 1B scale 5 GB
    instead of 15 GB). None when a name in `weights` is not a parameter.
    """
    import torch

    from omnic.runtime.lazy_weights import EAGER_BYTES, LazyWeights, lazy_reference_model

    # weights dequantized on demand: only the running block in fp32, not a whole second copy
    if isinstance(weights, LazyWeights) and (weights.nbytes is None
                                             or weights.nbytes > EAGER_BYTES):
        return lazy_reference_model(decoder, weights)
    params = dict(decoder.named_parameters())  # tied tensors appear once, as in state_dict
    if not set(weights) <= set(params):
        return None
    memo: dict[int, Any] = {}
    for pname, p in params.items():
        if pname in weights:
            w = np.asarray(weights[pname], dtype=np.float32)
            if not (w.flags.c_contiguous and w.flags.writeable):  # from_numpy needs both
                w = np.array(w, dtype=np.float32, order="C")
            memo[id(p)] = torch.nn.Parameter(torch.from_numpy(w), requires_grad=False)
        else:
            memo[id(p)] = p
    return copy.deepcopy(decoder, memo)
