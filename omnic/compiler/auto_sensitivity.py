"""What `quantization: auto` measures on calibration text: the divergence of a quantized decoder
from the fp32 one, and which int4 matrices are sensitive enough to keep at int8.

Measured on windows of calibration text (`AUTO_CALIBRATION`: omnic's built-in corpus of prose,
code and several languages, encoded by the model's tokenizer; disjoint from the golden texts, so
the golden check that follows judges the choice on text it was not made on). Each window runs
from position 0 in one call; the divergence is the mean KL(fp32 || quantized) over every position.

Promotion (`promote`), when the chosen preset stores matrices in fewer than 8 bits:
1. sensitivity: with every weight fake-quantized as the preset says, one backward pass of the
   divergence gives each int4 matrix's predicted gain at int8 (the `int8` preset's scheme), to
   first order: -grad . (w_int8 - w_int4). The `SHORTLIST` best per added byte are then measured:
   each alone is put back at int8 and the divergence it saves is its gain;
2. the measured matrices are taken by gain per added byte, best first, while the added bytes
   stay within `MAX_EXTRA` of the preset's weight bytes, every enabled target still carries the
   spec, and the memory plan still fits the device (so `omnic plan`'s "fits" still holds; its
   totals are the largest eligible preset's, which promotions may pass within the budget);
3. the promoted set is measured as a whole; it is kept only when it diverges less than the
   preset alone.
Each promoted matrix becomes an override by name whose `reason` says what was measured, so the
resolved spec, the manifest and `omnic plan --explain-quant` say why it got int8.
  ref: https://github.com/ggml-org/llama.cpp/blob/master/tools/quantize/README.md (mixtures
  that keep the sensitive tensors at more bits; here chosen by measurement, not by name)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from omnic.spec import Quantization, ResolvedSpec

AUTO_CALIBRATION = {"samples": 8, "seq_len": 128}  # 1024 tokens: the measure, not the codes
SHORTLIST = 24  # matrices whose gain is measured, of those the gradient ranks first
MAX_EXTRA = 0.10  # promotions add at most this share of the chosen preset's weight bytes
PROMOTED_SCHEME = "int8"  # the preset whose weight scheme a promoted matrix gets


def calibration_windows(spec: "ResolvedSpec", tokenizer: Any, spec_dir: Any) -> list[list[int]]:
    """`AUTO_CALIBRATION`'s windows of the built-in text, encoded by the model's tokenizer."""
    from omnic.compiler.calibrate import windows
    from omnic.spec.quant import Calibration

    return windows(spec, spec_dir, tokenizer, Calibration(**AUTO_CALIBRATION))


class WindowMeter:
    """KL(fp32 || model) over calibration windows, against the fp32 decoder's log-probabilities
    (computed once)."""

    def __init__(self, decoder: Any, windows: list[list[int]]) -> None:
        self.windows = [np.asarray(w, dtype=np.int64) for w in windows if len(w)]
        if not self.windows:
            raise ValueError("quantization auto: the calibration text holds no token")
        self.tokens = sum(len(w) for w in self.windows)
        import torch

        with torch.no_grad():
            self.fp32 = [self._log_probs(decoder, w) for w in self.windows]

    @staticmethod
    def _log_probs(model: Any, window: np.ndarray) -> Any:
        import torch

        dtype = next(model.parameters()).dtype
        k, v = model.empty_cache(batch=1, dtype=dtype, length=len(window))
        logits, _, _ = model(torch.from_numpy(window)[None], torch.arange(len(window)), k, v)
        return logits[0].float().log_softmax(-1)

    def _window_kld(self, model: Any, i: int) -> Any:
        """Summed KL(fp32 || model) over window i's positions (a torch scalar)."""
        p, q = self.fp32[i], self._log_probs(model, self.windows[i])
        return (p.exp() * (p - q)).sum(-1).clamp_min(0).sum()

    def kld(self, model: Any) -> float:
        """Mean KL(fp32 || model) over every position of every window."""
        import torch

        with torch.no_grad():
            return sum(float(self._window_kld(model, i)) for i in range(len(self.windows))) \
                / self.tokens

    def predicted_gains(self, model: Any, names: list[str],
                        delta: Callable[[str], Any]) -> dict[str, float]:
        """First-order KLD saved by adding `delta(name)` to each named parameter alone:
        -grad . delta, the gradient of the mean divergence taken by one backward pass (each
        delta is made, used and dropped in turn: one matrix at a time in memory)."""
        import torch

        params = dict(model.named_parameters())
        for name in names:
            params[name].requires_grad_(True)
            params[name].grad = None
        try:
            with torch.enable_grad():
                for i in range(len(self.windows)):
                    (self._window_kld(model, i) / self.tokens).backward()
            return {n: -float((params[n].grad * delta(n)).sum()) for n in names}
        finally:
            for name in names:
                params[name].requires_grad_(False)
                params[name].grad = None


@dataclass
class Promotion:
    """One int4 matrix kept at int8, and what its measurement said."""

    tensor: str
    gain: float  # divergence saved when only this matrix is int8 (nats, mean per position)
    extra_bytes: int  # the int8 form's bytes over the preset's (omnic's reference layout)
    rank: int  # 1 = the best gain per added byte


@dataclass
class PromotionResult:
    quantization: "Quantization"  # the preset with the promotions as overrides (or unchanged)
    promoted: list[Promotion]
    kld_before: float
    kld_after: float
    measured: int  # int4 matrices ranked (their gain predicted; the shortlist's measured)
    why_none: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kld_before": self.kld_before, "kld_after": self.kld_after,
                "measured": self.measured, "promoted": [asdict(p) for p in self.promoted],
                **({"why_none": self.why_none} if self.why_none else {})}


def _with_quant(spec: "ResolvedSpec", quant: "Quantization") -> "ResolvedSpec":
    return spec.model_copy(update={"quantization": quant})


def _promoted(quant: "Quantization", chosen: list[Promotion], scheme: Any,
              kld_before: float) -> "Quantization":
    """`quant` with one override by name per promotion, ahead of its own overrides."""
    from omnic.spec.quant import Match, Override

    extra = tuple(Override(match=Match(name=re.escape(p.tensor)), scheme=scheme.scheme,
                           group_size=scheme.group_size, symmetric=scheme.symmetric,
                           reason=f"auto: sensitivity rank {p.rank}, int8 saves "
                                  f"{p.gain:.3g} of KLD {kld_before:.3g} on calibration text")
                  for p in chosen)
    return quant.model_copy(update={"overrides": extra + tuple(quant.overrides)})


def _allowed(spec: "ResolvedSpec", quant: "Quantization") -> bool:
    """Every enabled target carries it and its memory plan fits the device."""
    from omnic.compiler.plan import plan_memory
    from omnic.targets.fates import NotCarried, fates

    s = _with_quant(spec, quant)
    plan = plan_memory(s)
    if not plan.fits:
        return False
    try:
        for target in spec.targets.enabled():
            fates(s, target)
    except NotCarried:
        return False
    return True


def promote(spec: "ResolvedSpec", quant: "Quantization", decoder: Any, meter: WindowMeter,
            weight_bytes: int, log: Callable[[str], None] | None = None) -> PromotionResult:
    """The chosen preset `quant` with its most sensitive int4 matrices at int8 (module
    docstring).

    Args:
        spec: the resolved spec (its quantization is ignored).
        quant: the chosen preset.
        decoder: the built fp32 decoder (not modified).
        meter: the calibration windows and their fp32 log-probabilities.
        weight_bytes: the preset's weight bytes (the memory plan's), for `MAX_EXTRA`.
        log: progress, one line at a time.
    """
    import torch

    from omnic.golden.reference_model import with_weights
    from omnic.presets import store
    from omnic.quant.reference import fake_quantize, reference_weights, storage_bytes
    from omnic.quant.select import tensor_schemes

    plan = tensor_schemes(_with_quant(spec, quant))
    state = decoder.state_dict()
    base = reference_weights(state, plan)
    model = with_weights(decoder, base)
    before = meter.kld(model)
    candidates = [n for n, ts in plan.items() if ts.scheme == "int4" and n in base]
    if not candidates:
        return PromotionResult(quant, [], before, before, 0, "no int4 matrix")
    to = store.load("quantization", PROMOTED_SCHEME).weights
    params = dict(model.named_parameters())

    def at_int8(name: str) -> Any:
        return torch.from_numpy(fake_quantize(state[name].detach().numpy(), to.scheme,
                                              to.group_size, to.symmetric))

    extra = {n: storage_bytes(tuple(state[n].shape), to.scheme, to.group_size, to.symmetric)
             - storage_bytes(tuple(state[n].shape), plan[n].scheme, plan[n].group_size,
                             plan[n].symmetric) for n in candidates}
    predicted = meter.predicted_gains(model, candidates,
                                      lambda n: at_int8(n) - params[n].data)
    shortlist = sorted(candidates, key=lambda n: (-predicted[n] / max(extra[n], 1), n))
    gains = {}
    for name in shortlist[:SHORTLIST]:
        p = params[name]
        kept, p.data = p.data, at_int8(name)
        gains[name] = before - meter.kld(model)
        p.data = kept
    if log:
        log(f"  auto: {len(candidates)} int4 matrices ranked by gradient, {len(gains)} "
            "measured at int8")
    ranked = sorted((n for n in gains if gains[n] > 0),
                    key=lambda n: (-gains[n] / max(extra[n], 1), n))
    chosen: list[Promotion] = []
    added = 0
    for rank, name in enumerate(ranked, 1):
        if added + extra[name] > MAX_EXTRA * weight_bytes:
            continue
        trial = chosen + [Promotion(name, gains[name], extra[name], rank)]
        if _allowed(spec, _promoted(quant, trial, to, before)):
            chosen, added = trial, added + extra[name]
    if not chosen:
        return PromotionResult(quant, [], before, before, len(candidates),
                               "no int4 matrix gains at int8 within the budget")
    for p in chosen:
        params[p.tensor].data = at_int8(p.tensor)
    after = meter.kld(model)
    if after >= before:
        return PromotionResult(quant, [], before, before, len(candidates),
                               f"the promoted set diverges no less ({after:.3g} >= {before:.3g})")
    return PromotionResult(_promoted(quant, chosen, to, before), chosen, before, after,
                           len(candidates))
