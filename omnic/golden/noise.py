"""How far the quantization-exact reference moves against itself: the conformance limits of an
artifact whose kernels round activations to int8.

Rounding activations to int8 turns float roundoff into whole quantization steps: an input a hair
either side of a rounding boundary lands one step apart, and 30 layers carry the step on. The
reference computes the same model in another order than the runtime, so the two part by this
amount on real weights however right the artifact is. The same reference with float64 weights
and activations (a twin with the same weights and the same rounding; its norms, softmax and the
rounding itself still take float32 steps where the model code casts) shows how much: on
SmolLM2-135M int4 g32 (4 text prompts x (32 + 16) positions) it moves max_abs 4.85, cosine
0.904, top-1 87.2 % against itself with XNNPACK's per-token rounding (8da4w), and max_abs 3.86,
cosine 0.992, top-1 95.7 % with llama.cpp's Q8_0 blocks; the ExecuTorch artifact itself was at
max_abs 4.35 and top-1 89.4 % (bench/real_quality.py). On random weights the same twin moves
1e-5 and the table's rows decide.

So for an artifact with rounded activations the conformance limits are the looser of the
table's row and FACTOR x the twin's difference (max_abs, nmse as its square, cosine and top-1 as
distances from 1), within fixed bounds, and never a limit the spec set itself. A wrong artifact
(a permuted or mis-scaled weight, swapped heads) moves the logits far beyond that, and the
weights it reports are checked separately (`weight_nmse`).

The twin costs one float64 copy of the model's parameters: it is made only when that copy is at
most MAX_BYTES, beyond which the table's rows stand alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from omnic.golden import metrics as M
from omnic.golden.tolerances import Tolerance

if TYPE_CHECKING:
    from omnic.targets.base import Runner

FACTOR = 2.0
MAX_BYTES = 2 * 2**30  # the float64 twin's parameters (a 250 M-parameter model)
# Bounds of the widened limits: a reference that moves more than this against itself cannot
# tell a right artifact from a wrong one, and the check says so instead of passing everything.
# (SmolLM2-135M 8da4w widens to max_abs 0.25 x max|logit|, nmse 0.018, cosine 0.81, top-1 0.74.)
MAX_ABS_CAP = 0.5  # x max|logit|
NMSE_CAP = 0.1
COSINE_FLOOR = 0.75
TOP1_FLOOR = 0.5


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

    def widen(self, tol: Tolerance, scale: float, keep: frozenset[str] = frozenset()
              ) -> Tolerance:
        """`tol` with each conformance limit no tighter than FACTOR x this difference, and no
        looser than the bounds below.

        Args:
            scale: max|logit| of the reference (max_abs limit = atol + rtol x scale).
            keep: metrics whose limit the spec set (golden.tolerances): never widened.
        """
        k = FACTOR
        limits = {
            "atol": min(max(tol.atol, k * self.max_abs - tol.rtol * scale),
                        MAX_ABS_CAP * scale - tol.rtol * scale),
            "nmse": min(max(tol.nmse, k * k * self.nmse), NMSE_CAP),
            "cosine": max(min(tol.cosine, 1.0 - k * (1.0 - self.cosine)), COSINE_FLOOR),
            "top1": max(min(tol.top1, 1.0 - k * (1.0 - self.top1)), TOP1_FLOOR),
        }
        # never tighter than the row, whatever the bounds say
        wider = {n: v for n, v in limits.items() if n not in keep and (
            v > getattr(tol, n) if n in ("atol", "nmse") else v < getattr(tol, n))}
        if not wider:
            return tol
        return replace(tol, **wider, noise_source=(
            f"{k:g} x what the exact reference moves against itself with float64 matmuls: "
            f"max_abs {self.max_abs:.3g}, nmse {self.nmse:.3g}, cosine {self.cosine:.4g}, "
            f"top1 {self.top1:.4g}"))


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
    noise = ReferenceNoise(values[M.MAX_ABS], values[M.NMSE], values[M.COSINE], values[M.TOP1])
    # compare() turns non-finite logits into +-1e30: such a twin measured nothing
    return noise if math.isfinite(noise.max_abs) and noise.max_abs < 1e29 else None

