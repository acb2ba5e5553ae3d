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
  candidate with the largest memory total, the worst case of what compile may pick, so a
  "fits" from `omnic plan` holds whatever compile decides. The plan says "auto (decided at
  compile)". No eligible candidate is a validation error that lists why each one failed.
- `choose` (at compile, after the build): every eligible candidate's weights are fake-quantized
  with omnic's numpy reference quantizers (`omnic.quant.reference.reference_weights`, the
  quantization-exact reference, no backend is lowered), the torch decoder runs the golden
  prompts with them along the fp32 model's greedy path, and the candidate with the lowest mean
  KL(fp32 || candidate) wins (ties: fewer bytes, then name). The candidates, their KLD, top-1
  agreement, bytes and fit, and the reason for the choice go into the manifest
  (`quantization_auto`).
Quality first: when fp32 fits and every target carries it, fp32 (KLD 0) is chosen; a preset
named in the spec is how to ask for a smaller model than the device needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

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
    top1: float | None = None

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

    def to_dict(self) -> dict[str, Any]:
        return {"mode": AUTO, "chosen": self.preset, "reason": self.reason,
                "measured_with": "omnic.quant.reference fake-quantized weights in the torch "
                                 "decoder, golden prompts, fp32 greedy path",
                "candidates": [asdict(c) for c in self.candidates]}


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


def _measure(decoder: Any, weights: dict, inputs: Any, fp32_paths: list) -> tuple[float, float]:
    """Mean KL(fp32 || candidate) and top-1 agreement along the fp32 greedy paths."""
    import numpy as np

    from omnic.golden import metrics as M
    from omnic.golden.runs import run_forced
    from omnic.golden.reference_model import with_weights
    from omnic.runtime.torch_runner import TorchRunner

    model = with_weights(decoder, weights)
    runner = TorchRunner(model)
    vocab = fp32_paths[0][1].shape[-1]
    kl, top1 = [], []
    for prompt, (tokens, fp32_logits) in zip(inputs.prompts, fp32_paths):
        got = run_forced(runner, prompt, tokens[:-1], vocab)
        kl.append(M.kld_rows(fp32_logits, got))
        top1.append(M.top1_rows(got, fp32_logits))
    return float(np.concatenate(kl).mean()), float(np.concatenate(top1).mean())


def choose(spec: "ResolvedSpec", decoder: Any, inputs: Any, log: Any = None) -> Choice:
    """Measure every eligible candidate on the golden inputs and pick the best (needs torch).

    Args:
        spec: the resolved spec (its quantization is the placeholder).
        decoder: the built fp32 decoder (not modified).
        inputs: the golden inputs (`omnic.golden.inputs.GoldenInputs`).
        log: a callable taking one line of text (progress), or None.

    Raises:
        ValueError: no candidate is eligible.
    """
    from omnic.golden.runs import run_greedy
    from omnic.quant.reference import reference_weights
    from omnic.quant.select import tensor_schemes
    from omnic.runtime.torch_runner import TorchRunner

    evaluated = evaluate(spec)
    eligible = [(c, q) for c, q in evaluated if c.eligible]
    if not eligible:
        raise ValueError(placeholder(spec)[1])
    fp32 = TorchRunner(decoder)
    vocab = int(decoder.state_dict()["embed.weight"].shape[0])
    paths = [run_greedy(fp32, p, inputs.decode_steps, vocab) for p in inputs.prompts]
    state = decoder.state_dict()
    for cand, quant in eligible:
        plan = tensor_schemes(_with_quant(spec, quant))
        weights = reference_weights(state, plan)
        if weights:
            cand.kld, cand.top1 = _measure(decoder, weights, inputs, paths)
        else:
            cand.kld, cand.top1 = 0.0, 1.0  # fp32: the reference itself
        if log:
            log(f"  {cand.name:<16} kld {cand.kld:.3g}  top1 {cand.top1:.1%}  "
                f"weights {cand.weight_bytes / 2**20:.1f} MiB")
    best, quant = min(eligible, key=lambda cq: (cq[0].kld, cq[0].weight_bytes, cq[0].name))
    others = [c for c, _ in evaluated if not c.eligible]
    reason = (f"lowest KLD vs fp32 ({best.kld:.3g}) of {len(eligible)} eligible presets "
              f"(fit {spec.device.name}'s {spec.device.memory_budget_mb} MiB and carried by "
              f"{', '.join(spec.targets.enabled())})")
    if others:
        reason += "; not eligible: " + ", ".join(f"{c.name} ({c.problems[0]})" for c in others)
    return Choice(best.name, quant, [c for c, _ in evaluated], reason)


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


def choose_for_build(spec: "ResolvedSpec", decoder: Any, tokenizer: Any, log: Any = None) -> Choice:
    """`choose` on the spec's golden inputs (the compile's `quant auto` stage)."""
    from omnic.golden import inputs as golden_inputs

    inputs = golden_inputs.inputs_for_spec(spec, golden_inputs.special_ids_of(tokenizer), tokenizer)
    choice = choose(spec, decoder, inputs, log)
    if log:
        log(f"  quantization auto -> {choice.preset}: {choice.reason}")
    return choice
