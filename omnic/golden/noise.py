"""How far the quantization-exact reference moves against itself: the conformance limits of an
artifact whose kernels round activations to int8.

Rounding activations to int8 turns float roundoff into whole quantization steps: an input a hair
either side of a rounding boundary lands one step apart, and 30 layers carry the step on. The
reference computes the same model in another order than the runtime, so the two part by this
amount on real weights however right the artifact is. The same reference computed in float64
instead of float32 (a twin with the same weights and the same rounding) shows how much: on
SmolLM2-135M int4 g32 (4 text prompts x (32 + 16) positions) it moves max_abs 4.85, cosine
0.904, top-1 87.2 % against itself with XNNPACK's per-token rounding (8da4w), and max_abs 3.86,
cosine 0.992, top-1 95.7 % with llama.cpp's Q8_0 blocks; the ExecuTorch artifact itself was at
max_abs 4.35 and top-1 89.4 % (bench/real_quality.py). On random weights the same twin moves
1e-5 and the table's rows decide.

So for an artifact with rounded activations the conformance limits are the looser of the
table's row and FACTOR x the twin's difference (max_abs, nmse as its square, cosine and top-1 as
distances from 1). A wrong artifact (a permuted or mis-scaled weight, swapped heads) moves the
logits far beyond that, and the weights it reports are checked separately (`weight_nmse`).

The twin costs one float64 copy of the model's parameters: it is made only when that copy is at
most MAX_BYTES, beyond which the table's rows stand alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from omnic.golden import metrics as M
from omnic.golden.tolerances import Tolerance

if TYPE_CHECKING:
    from omnic.targets.base import Runner

FACTOR = 2.0
MAX_BYTES = 2 * 2**30  # the float64 twin's parameters (a 250 M-parameter model)


@dataclass(frozen=True)
class ReferenceNoise:
    """The float64 twin of the exact reference against the reference (the compare metrics)."""

    max_abs: float
    nmse: float
    cosine: float
    top1: float

    def metrics(self) -> dict[str, float]:
        return {M.NOISE_MAX_ABS: self.max_abs, M.NOISE_NMSE: self.nmse,
                M.NOISE_COSINE: self.cosine, M.NOISE_TOP1: self.top1}

    def widen(self, tol: Tolerance, scale: float) -> Tolerance:
        """`tol` with each conformance limit no tighter than FACTOR x this difference.

        Args:
            scale: max|logit| of the reference (max_abs limit = atol + rtol x scale).
        """
        k = FACTOR
        atol = max(tol.atol, k * self.max_abs - tol.rtol * scale)
        nmse = max(tol.nmse, k * k * self.nmse)
        cosine = min(tol.cosine, 1.0 - k * (1.0 - self.cosine))
        top1 = min(tol.top1, 1.0 - k * (1.0 - self.top1))
        if (atol, nmse, cosine, top1) == (tol.atol, tol.nmse, tol.cosine, tol.top1):
            return tol
        return replace(tol, atol=atol, nmse=nmse, cosine=cosine, top1=top1, noise_source=(
            f"{k:g} x what the exact reference moves against itself in float64: max_abs "
            f"{self.max_abs:.3g}, nmse {self.nmse:.3g}, cosine {self.cosine:.4g}, top1 "
            f"{self.top1:.4g}"))


def float64_twin(model: Any) -> Any | None:
    """A float64 copy of `model` (hooks included), or None when it would exceed MAX_BYTES or
    `model` reads its weights on demand (runtime/lazy_weights.py: empty parameters)."""
    import torch

    params = dict(model.named_parameters(remove_duplicate=True))
    lazy = any(p.numel() == 0 for p in params.values())
    if lazy or 8 * sum(p.numel() for p in params.values()) > MAX_BYTES:
        return None
    memo = {id(p): torch.nn.Parameter(p.detach().to(torch.float64), requires_grad=False)
            for p in params.values()}
    twin = copy.deepcopy(model, memo)  # the parameters once, already float64
    return twin.double()  # buffers (RoPE tables); parameters stay the memo's objects


def measure(model: Any, make_runner: Callable[[Any], "Runner"],
            compare: Callable[["Runner"], dict[str, float]]) -> ReferenceNoise | None:
    """The float64 twin of `model`, driven by `compare` along the reference's path.

    Args:
        model: the exact reference's model (float32, with its activation rounding hooks).
        make_runner: model -> a Runner for it.
        compare: runner -> the compare metrics against the float32 reference.
    """
    twin = float64_twin(model)
    if twin is None:
        return None
    values = compare(make_runner(twin))
    return ReferenceNoise(values[M.MAX_ABS], values[M.NMSE], values[M.COSINE], values[M.TOP1])

