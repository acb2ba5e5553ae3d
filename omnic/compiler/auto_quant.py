"""`quantization: auto`: the quant preset with the best measured quality that fits and is carried.

Candidates are the presets of presets/quant/ (and $OMNIC_PRESET_PATH). A candidate is eligible
when
- every matrix's group size divides its input width,
- its memory plan fits the device budget (`omnic.compiler.plan.plan_memory`), and
- every enabled target can carry it (the torch-free rules and tables of `omnic.targets.fates`,
  which `Target.check` reads too).

A compiler stage (between resolve and plan), because it reads the memory plan, the targets'
rules and, to choose, the built model. Two phases, because choosing needs torch and
`omnic validate` / `omnic plan` must not:
- `placeholder` (torch-free, at resolve time; `omnic.compiler.validate.resolve` passes
  `resolve_with_auto` to `omnic.presets.resolve`): validation and the plan use the eligible
  candidate with the largest memory total, the largest preset compile may pick; a "fits" from
  `omnic plan` holds whatever compile decides, as compile's promotions stay within the budget.
  The plan says "auto (decided at compile)". No eligible candidate is a validation error that
  lists why each one failed.
- `choose` (at compile, after the build): every eligible candidate's weights are fake-quantized
  with omnic's numpy reference quantizers (`omnic.quant.reference.reference_weights`, the
  quantization-exact reference, no backend is lowered), the torch decoder runs windows of
  calibration text with them (`omnic.compiler.auto_sensitivity`: omnic's built-in corpus,
  disjoint from the golden prompts that judge the build afterwards), and the candidate with the
  lowest mean KL(fp32 || candidate) wins (ties: fewer bytes, then name). When the winner stores
  matrices in int4, its most sensitive ones, measured on the same text, are kept at int8 within
  the device budget (`auto_sensitivity.promote`; the memory totals may then pass the
  placeholder's, never the budget). The candidates, their KLD, bytes and fit, the
  promotions and the reason for the choice go into the manifest (`quantization_auto`).
Quality first: when fp32 fits and every target carries it, fp32 (KLD 0) is chosen; a preset
named in the spec is how to ask for a smaller model than the device needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from omnic.spec import Quantization, ResolvedSpec

AUTO = "auto"


@dataclass
class Candidate:
    """One quant preset considered by `quantization: auto`."""

    name: str
    weight_bytes: int = 0
    total_bytes: int = 0
    fits: bool = False
    carried: bool = False
    problems: list[str] = field(default_factory=list)  # why it is not eligible
    kld: float | None = None  # measured at compile

    @property
    def eligible(self) -> bool:
        return self.fits and self.carried and not self.problems


@dataclass
class Choice:
    """The decision: the chosen preset, every candidate, and why."""

    preset: str
    quantization: "Quantization"
    candidates: list[Candidate]
    reason: str
    promotion: Any = None  # auto_sensitivity.PromotionResult, when the winner has int4 matrices

    def to_dict(self) -> dict[str, Any]:
        from omnic.compiler.auto_sensitivity import AUTO_CALIBRATION

        return {"mode": AUTO, "chosen": self.preset, "reason": self.reason,
                "measured_with": "omnic.quant.reference fake-quantized weights in the torch "
                                 "decoder on calibration text (builtin, "
                                 f"{AUTO_CALIBRATION['samples']} windows x "
                                 f"{AUTO_CALIBRATION['seq_len']} tokens)",
                "candidates": [asdict(c) for c in self.candidates],
                "promotion": self.promotion.to_dict() if self.promotion else None}


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def _with_quant(spec: "ResolvedSpec", quant: "Quantization") -> "ResolvedSpec":
    return spec.model_copy(update={"quantization": quant})


def evaluate(spec: "ResolvedSpec", names: list[str] | None = None) -> list[tuple[Candidate, Any]]:
    """Every candidate preset with its plan, fit and carriage (torch-free).

    Args:
        spec: a resolved spec; its own quantization is ignored.
        names: presets to consider (default: every quant preset).

    Returns:
        (Candidate, Quantization or None when the preset is invalid) in name order.
    """
    from omnic.compiler.plan import plan_memory
    from omnic.presets import store
    from omnic.targets.fates import NotCarried, fates
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import decoder_tensors

    tensors = decoder_tensors(spec.model)
    out = []
    for name in names or store.names("quantization"):
        cand = Candidate(name)
        try:
            quant = store.load("quantization", name)
        except Exception as err:  # noqa: BLE001 - an invalid user preset is not a candidate
            cand.problems.append(f"invalid preset: {err}")
            out.append((cand, None))
            continue
        s = _with_quant(spec, quant)
        schemes = tensor_schemes(s, tensors)
        bad = [t.name for t in tensors if schemes[t.name].group_size
               and t.shape[-1] % schemes[t.name].group_size]
        if bad:
            cand.problems.append(f"group_size does not divide the input width of {bad[0]}")
            out.append((cand, quant))
            continue
        plan = plan_memory(s)
        cand.weight_bytes, cand.total_bytes, cand.fits = (plan.weight_bytes, plan.total_bytes,
                                                          plan.fits)
        if not plan.fits:
            cand.problems.append(f"needs {plan.total_bytes / 2**20:.0f} MiB, budget "
                                 f"{plan.budget_bytes / 2**20:.0f} MiB")
        cand.carried = True
        for target in spec.targets.enabled():
            try:
                fates(s, target)
            except NotCarried as why:
                cand.carried = False
                cand.problems.append(f"{target}: {why}")
        out.append((cand, quant))
    return out


def placeholder(spec: "ResolvedSpec") -> tuple["Quantization | None", str]:
    """The quantization validation and `omnic plan` use for `auto` (torch-free).

    Returns:
        (the eligible candidate with the largest memory total, its name) or (None, why no
        candidate is eligible).
    """
    evaluated = evaluate(spec)
    eligible = [(c, q) for c, q in evaluated if c.eligible]
    if not eligible:
        why = "; ".join(f"{c.name}: {c.problems[0]}" for c, _ in evaluated if c.problems)
        return None, ("quantization auto: no quant preset fits the device and is carried by "
                      f"every enabled target ({why})")
    cand, quant = max(eligible, key=lambda cq: (cq[0].total_bytes, cq[0].name))
    return quant, cand.name


def choose(spec: "ResolvedSpec", decoder: Any, meter: Any,
           log: Callable[[str], None] | None = None) -> Choice:
    """Measure every eligible candidate on calibration text, pick the best, and keep its most
    sensitive int4 matrices at int8 (needs torch).

    Args:
        spec: the resolved spec (its quantization is the placeholder).
        decoder: the built fp32 decoder (not modified).
        meter: `auto_sensitivity.WindowMeter` of the calibration windows.
        log: a callable taking one line of text (progress), or None.

    Raises:
        ValueError: no candidate is eligible.
    """
    from omnic.compiler.auto_sensitivity import promote
    from omnic.golden.reference_model import with_weights
    from omnic.quant.reference import reference_weights
    from omnic.quant.select import tensor_schemes

    evaluated = evaluate(spec)
    eligible = [(c, q) for c, q in evaluated if c.eligible]
    if not eligible:
        raise ValueError(placeholder(spec)[1])
    state = decoder.state_dict()
    for cand, quant in eligible:
        weights = reference_weights(state, tensor_schemes(_with_quant(spec, quant)))
        # fp32: the reference itself
        cand.kld = meter.kld(with_weights(decoder, weights)) if weights else 0.0
        if log:
            log(f"  {cand.name:<16} kld {cand.kld:.3g}  "
                f"weights {cand.weight_bytes / 2**20:.1f} MiB")
    best, quant = min(eligible, key=lambda cq: (cq[0].kld, cq[0].weight_bytes, cq[0].name))
    others = [c for c, _ in evaluated if not c.eligible]
    reason = (f"lowest KLD vs fp32 on calibration text ({best.kld:.3g}) of {len(eligible)} "
              f"eligible presets (fit {spec.device.name}'s {spec.device.memory_budget_mb} MiB "
              f"and carried by {', '.join(spec.targets.enabled())})")
    if others:
        reason += "; not eligible: " + ", ".join(f"{c.name} ({c.problems[0]})" for c in others)
    promotion = promote(spec, quant, decoder, meter, best.weight_bytes, log)
    if promotion.promoted:
        reason += (f"; {len(promotion.promoted)} of {promotion.measured} int4 matrices kept at "
                   f"int8 by measured sensitivity (KLD {promotion.kld_before:.3g} -> "
                   f"{promotion.kld_after:.3g})")
    return Choice(best.name, promotion.quantization, [c for c, _ in evaluated], reason,
                  promotion if promotion.measured else None)


def resolve_with_auto(fields: dict[str, Any]) -> tuple["ResolvedSpec | None", str]:
    """A ResolvedSpec from its fields whose quantization is `auto`, planned with `placeholder`.

    Returns:
        (the resolved spec, the placeholder preset's name) or (None, why no preset is eligible).
    """
    from omnic.spec import Quantization, ResolvedSpec

    tmp = ResolvedSpec(**{**fields, "quantization": Quantization()})
    quant, name = placeholder(tmp)
    if quant is None:
        return None, name
    return tmp.model_copy(update={"quantization": quant}), name


def choose_for_build(spec: "ResolvedSpec", decoder: Any, tokenizer: Any, spec_dir: Any,
                     log: Callable[[str], None] | None = None) -> Choice:
    """`choose` on the built-in calibration text (the compile's `quant auto` stage)."""
    from omnic.compiler.auto_sensitivity import WindowMeter, calibration_windows

    meter = WindowMeter(decoder, calibration_windows(spec, tokenizer, spec_dir))
    choice = choose(spec, decoder, meter, log)
    if log:
        log(f"  quantization auto -> {choice.preset}: {choice.reason}")
        for p in choice.promotion.promoted if choice.promotion else []:
            log(f"  auto: {p.tensor} int8 (rank {p.rank}, saves {p.gain:.3g} KLD, "
                f"+{p.extra_bytes / 2**10:.0f} KiB)")
    return choice
