"""Calibration statistics: what the linears of the fp32 decoder see on calibration text.

For every `nn.Linear` whose weight a calibrated method quantizes, the input x [tokens, in] adds
x^T x to H (the Hessian of the layer's output error, GPTQ's and AWQ's loss) and |x| to a
per-channel sum (AWQ's activation magnitude). Linears fed by the same tensor (q, k and v after one
norm; gate and up) share one entry, found by the identity of their input.

Memory stays bounded: H is in^2 float32 per input, so layers are taken in chunks whose H fit
`H_BUDGET` bytes; each chunk runs every window again, stopping after the chunk's last layer.
  ref: https://github.com/IST-DASLab/gptq/blob/main/llama.py (layer-by-layer calibration)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

H_BUDGET = 1 << 30  # bytes of H held at once (1 GiB: Llama-3.2-1B's 16 layers in 6 chunks)
_LAYER = re.compile(r"^layers\.(\d+)\.")


@dataclass
class InputStats:
    """One input shared by `consumers` (tensor names, in the order they ran)."""

    key: str  # the first consuming module's name
    consumers: list[str] = field(default_factory=list)
    h: Any = None  # torch float32 [in, in], sum of x^T x
    abs_sum: Any = None  # torch float32 [in], sum of |x|
    tokens: int = 0

    def hessian(self) -> np.ndarray:
        return self.h.double().numpy()

    def abs_mean(self) -> np.ndarray:
        return (self.abs_sum / max(self.tokens, 1)).double().numpy()


class _StopForward(Exception):
    """Raised after a chunk's last layer: the rest of the forward is not needed."""


def _layer_of(module_name: str, n_layers: int) -> int:
    m = _LAYER.match(module_name)
    return int(m.group(1)) if m else n_layers  # lm_head: after the last layer


def linears(decoder: Any, names: set[str]) -> dict[str, Any]:
    """module name -> nn.Linear for the linears whose `<module>.weight` is in `names`."""
    from torch import nn

    return {n: m for n, m in decoder.named_modules()
            if isinstance(m, nn.Linear) and f"{n}.weight" in names}


def chunks(decoder: Any, mods: dict[str, Any], budget: int = H_BUDGET) -> list[list[str]]:
    """The modules in layer order, cut so that each chunk's H (at most one per module) fits."""
    n_layers = len(decoder.layers)
    by_layer: dict[int, list[str]] = {}
    for name in mods:
        by_layer.setdefault(_layer_of(name, n_layers), []).append(name)
    out: list[list[str]] = []
    size = 0
    for layer in sorted(by_layer):
        # q/k/v and gate/up share an H: count each distinct input width once per layer
        need = sum(w * w * 4 for w in {mods[n].in_features for n in by_layer[layer]}) * 2
        if out and size + need <= budget:
            out[-1] += by_layer[layer]
            size += need
        else:
            out.append(list(by_layer[layer]))
            size = need
    return out


def _forward(decoder: Any, window: list[int]) -> None:
    import torch

    ids = torch.tensor([window], dtype=torch.int64)
    t = ids.shape[1]
    past_k, past_v = decoder.empty_cache(1, length=0)  # no past (a short_conv layer: zeros)
    decoder.forward_concat(ids, torch.ones(1, t, dtype=torch.int64),
                           torch.arange(t, dtype=torch.int64)[None], past_k, past_v)


def collect(decoder: Any, windows: list[list[int]], mods: dict[str, Any],
            budget: int = H_BUDGET) -> Iterator[list[InputStats]]:
    """The statistics of `mods`, one chunk of layers at a time (see the module docstring).

    Yields:
        per chunk, its InputStats in the order the inputs were first seen. The caller may change
        the chunk's weights (AWQ's fold, which keeps the function) before asking for the next.
    """
    import torch

    n_layers = len(decoder.layers)
    for chunk in chunks(decoder, mods, budget):
        stats: dict[str, InputStats] = {}
        seen: dict[int, tuple[Any, str]] = {}  # id(input) -> (input kept alive, key)

        def pre_hook(module: Any, args: tuple, name: str) -> None:
            x = args[0]
            hit = seen.get(id(x))
            key = hit[1] if hit is not None and hit[0] is x else name
            seen[id(x)] = (x, key)
            s = stats.setdefault(key, InputStats(key))
            if f"{name}.weight" not in s.consumers:
                s.consumers.append(f"{name}.weight")
            if key != name:
                return  # a second consumer of the same input adds nothing to H
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            if s.h is None:
                s.h = torch.zeros(x2.shape[1], x2.shape[1])
                s.abs_sum = torch.zeros(x2.shape[1])
            s.h.addmm_(x2.T, x2)
            s.abs_sum += x2.abs().sum(0)
            s.tokens += x2.shape[0]

        def stop(*_: Any) -> None:
            raise _StopForward

        handles = [mods[n].register_forward_pre_hook(
            lambda m, a, n=n: pre_hook(m, a, n)) for n in chunk]
        last = max(_layer_of(n, n_layers) for n in chunk)
        if last < n_layers:  # the final norm and the logits only when lm_head is calibrated
            handles.append(decoder.layers[last].register_forward_hook(stop))
        try:
            with torch.no_grad():
                for window in windows:
                    try:
                        _forward(decoder, window)
                    except _StopForward:
                        pass
                    seen.clear()
        finally:
            for h in handles:
                h.remove()
        yield list(stats.values())
