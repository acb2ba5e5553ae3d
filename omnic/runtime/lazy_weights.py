"""Quantization-exact references that never hold a second fp32 copy of the model.

A target's `artifact.reference_weights` may be a `LazyWeights`: name -> float32 array, each
dequantized from the artifact's compact storage when it is read and never cached. The golden
check then builds the exact reference with `lazy_reference_model`: a copy of the decoder whose
quantized parameters are empty until the module that owns them runs. Only the block being
computed (and the top-level tensors: embedding, tied lm_head, final norm, for the whole call)
exist in fp32 at a time, instead of a full dequantized copy of every weight beside the fp32
model: at 0.5B parameters 2 GB less at the compile's peak.

The arithmetic is unchanged: each forward dequantizes the same stored values to the same float32
arrays an eager copy would hold (the cost is time: one dequantization per forward call).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

# Below this many fp32 bytes the reference is materialised eagerly: no hooks and no repeated
# dequantization. Up to ~200 M parameters (SmolLM2-135M: 0.54 GB) the fp32 copy is worth more
# than dequantizing every matrix at each of the golden check's ~130 forward calls; at 0.5B and
# above memory comes first.
EAGER_BYTES = 800 * 2**20


class LazyWeights(Mapping[str, np.ndarray]):
    """name -> float32 array computed by `loaders[name]()` at every read (nothing cached).

    Args:
        loaders: name -> function returning the dequantized array in omnic layout.
        nbytes: the fp32 bytes of all the arrays (for the eager/lazy choice); None: unknown.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]],
                 nbytes: int | None = None) -> None:
        self._loaders = dict(loaders)
        self.nbytes = nbytes

    def __getitem__(self, name: str) -> np.ndarray:
        return self._loaders[name]()

    def __contains__(self, name: object) -> bool:  # Mapping's default would load the tensor
        return name in self._loaders

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __repr__(self) -> str:
        return f"LazyWeights({len(self)} tensors)"


def _parameter(array: np.ndarray) -> Any:
    import torch

    w = np.asarray(array, dtype=np.float32)
    if not (w.flags.c_contiguous and w.flags.writeable):  # from_numpy needs both
        w = np.array(w, dtype=np.float32, order="C")
    return torch.nn.Parameter(torch.from_numpy(w), requires_grad=False)


def lazy_reference_model(decoder: Any, weights: LazyWeights) -> Any | None:
    """A copy of `decoder` whose parameters named in `weights` are read from it on demand.

    Parameters not in `weights` are the decoder's own objects (shared, inference never writes
    them); modules and buffers are copied. Parameters under `layers.{i}.` exist while block i
    runs; the others (embedding, lm_head, final norm) while the whole model runs.

    Returns:
        The model, or None when a name in `weights` is not a parameter of `decoder`.
    """
    import torch

    params = dict(decoder.named_parameters())  # tied tensors appear once, as in state_dict
    if not set(weights) <= set(params):
        return None
    memo: dict[int, Any] = {}
    for pname, p in params.items():
        memo[id(p)] = (torch.nn.Parameter(torch.empty(0), requires_grad=False)
                       if pname in weights else p)
    model = copy.deepcopy(decoder, memo)

    owners: dict[str, list[tuple[Any, str, str]]] = {}  # hook scope -> (module, attr, name)
    for pname in weights:
        parts = pname.split(".")
        scope = ".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 2 else ""
        module = model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model
        owners.setdefault(scope, []).append((module, parts[-1], pname))

    def attach(scope_module: Any, entries: list[tuple[Any, str, str]]) -> None:
        def fill(*_: Any) -> None:
            for module, attr, pname in entries:
                module._parameters[attr] = _parameter(weights[pname])  # noqa: SLF001

        def empty(*_: Any) -> None:
            for module, attr, _ in entries:
                module._parameters[attr] = torch.nn.Parameter(  # noqa: SLF001
                    torch.empty(0), requires_grad=False)

        scope_module.register_forward_pre_hook(fill)
        scope_module.register_forward_hook(empty)

    for scope, entries in owners.items():
        attach(model.get_submodule(scope) if scope else model, entries)
    return model
