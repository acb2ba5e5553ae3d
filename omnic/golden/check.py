"""Golden conformance: run an artifact on its own runtime and compare it with two references.

Nothing here knows any target: an artifact is opened with `target.load(artifact, build_dir)`
(the Target interface) and driven through the Runner protocol (`reset`, `forward`). A target
that stores weights other than fp32 hands over `artifact.reference_weights`; the rest is here.

The two references, both PyTorch on the decoder the compiler built (never the program the
targets lowered, so a fault planted in lowering cannot leak into a reference):
- fp32: the built decoder;
- quantization-exact: a copy with `artifact.reference_weights` loaded (the fp32 one when None).
  Its weights must be a quantization of the fp32 weights (`weight_nmse`), so a target cannot
  make a wrong tensor "exact" by reporting it as stored. Where the runtime's kernel rounds a
  matmul's input to int8 (`artifact.activation_quant`), the copy rounds it the same way
  (golden/activations.py).

Per case, every reference runs its own greedy decode of `decode_steps` tokens (the prompt in one
call, then one token per call) and records its logits on that path. The runtime is first driven
along the exact reference's path (teacher forcing, the same call pattern): every prompt and
decode position is compared there. Where the runtime's argmax departs from the reference's
greedy token, the reference's logits on the runtime's token at that very position are compared
with its own choice: a departure between near-equal logits (gap within twice the error the runtime
shows, capped at what the tolerance allows) is a tie, anything else fails. The runtime's own
greedy continuation is then run to report how long it agrees. Because everything the runtime
is compared with is a saved array, `omnic verify` re-runs the check later from the build's
golden/ files alone, without torch.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass, field as dataclass_field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from omnic.golden import activations, field, noise
from omnic.golden import metrics as M
from omnic.golden.inputs import GoldenInputs
from omnic.golden.reference_model import weight_nmse, with_weights
from omnic.golden.runs import run_forced, run_greedy
from omnic.golden.store import load_npz, save_npz
from omnic.golden.tolerances import (
    METRIC_KEYS, Tolerance, ToleranceError, family, lookup, overridden, weight_limit,
)
from omnic.constants import GoldenStatus
from omnic.runtime import pages

if TYPE_CHECKING:
    from omnic.targets.base import Artifact, Runner, Target

GOLDEN_DIR = "golden"  # inside a build
INPUTS_FILE = "inputs.npz"
FP32_REFERENCE = "fp32"


@dataclass
class ReferenceData:
    """What a reference did on the golden inputs; saved as golden/<name>.npz in the build."""

    name: str  # "fp32" or "exact-<sha256 of the reference weights, 12 hex>"
    tokens: np.ndarray  # int64 [cases, S]: this reference's greedy continuation
    logits: np.ndarray  # float32 [cases, T+S-1, V]: its logits along prompt + tokens[:-1]
    fp32_logits: np.ndarray  # fp32 model's logits along the same path
    fp32_tokens: np.ndarray  # the fp32 model's own greedy continuation

    @property
    def filename(self) -> str:
        return f"{self.name}.npz"

    def save(self, golden_dir: Path) -> None:
        arrays = {"tokens": self.tokens, "logits": self.logits, "fp32_tokens": self.fp32_tokens}
        if self.name != FP32_REFERENCE:  # the fp32 file would hold the same array twice
            arrays["fp32_logits"] = self.fp32_logits
        save_npz(golden_dir / self.filename, arrays)

    @classmethod
    def load(cls, path: Path) -> "ReferenceData":
        a = load_npz(path)
        return cls(path.stem, a["tokens"], a["logits"], a.get("fp32_logits", a["logits"]),
                   a["fp32_tokens"])


@dataclass
class GoldenResult:
    status: str  # GoldenStatus
    reason: str | None = None
    metrics: dict[str, float] = dataclass_field(default_factory=dict)
    reference: str | None = None  # build-relative path of the reference file
    limits: dict[str, float] = dataclass_field(default_factory=dict)


class GoldenReferenceError(Exception):
    """An artifact's reference_weights cannot be a quantization of the model."""


# -- references --------------------------------------------------------------------------------


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        _digest_update(h, name, weights[name])
    return h.hexdigest()


def _digest_update(h: Any, name: str, array: np.ndarray) -> None:
    arr = np.ascontiguousarray(array, dtype=np.float32)
    h.update(f"{name}:{list(arr.shape)}\n".encode())
    h.update(arr)  # the buffer itself: tobytes() would copy every tensor first


def reference_data(name: str, runner: "Runner", fp32_runner: "Runner", inputs: GoldenInputs,
                   vocab: int, fp32: ReferenceData | None = None) -> ReferenceData:
    """Run a reference runner (and the fp32 one along its path) over the golden inputs."""
    S = inputs.decode_steps
    toks, logits, fp32_logits = [], [], []
    for c, prompt in enumerate(inputs.prompts):
        t, lg = run_greedy(runner, prompt, S, vocab)
        toks.append(t)
        logits.append(lg)
        if fp32 is not None and np.array_equal(t, fp32.tokens[c]):
            fp32_logits.append(fp32.logits[c])  # same path: reuse instead of re-running
        elif fp32 is not None:
            fp32_logits.append(run_forced(fp32_runner, prompt, t[:-1], vocab))
    tokens, logits_a = np.stack(toks), np.stack(logits)
    if fp32 is None:  # this is the fp32 reference
        return ReferenceData(name, tokens, logits_a, logits_a, tokens)
    return ReferenceData(name, tokens, logits_a, np.stack(fp32_logits), fp32.tokens)


# -- comparison --------------------------------------------------------------------------------


def _where(row: int, T: int) -> str:
    return f"prompt position {row}" if row < T else f"position {row} (decode step {row - T + 1})"


def compare(runner: "Runner", inputs: GoldenInputs, ref: ReferenceData, tol: Tolerance
            ) -> tuple[str, str | None, dict[str, float]]:
    """Drive `runner` over the golden inputs and judge it against `ref` with `tol`.

    Returns:
        (status, reason, metrics); reason names each broken limit with its case and position.
    """
    T, S, V = inputs.prompt_tokens, inputs.decode_steps, ref.logits.shape[-1]
    scale = float(np.abs(ref.logits).max())
    abs_limit = tol.atol + tol.rtol * scale
    violations: list[str] = []
    top1_hits = top1_fp32_hits = rows_total = 0
    kld_sum = ref_kld_sum = nll_sum = fp32_nll_sum = 0.0
    greedy, greedy_fp32 = [], []
    nmse_worst, cos_worst, abs_worst, kld_worst = (-1.0, ""), (2.0, ""), (-1.0, ""), (-1.0, "")

    for c, prompt in enumerate(inputs.prompts):
        exact, fp32 = ref.logits[c], ref.fp32_logits[c]
        got = run_forced(runner, prompt, ref.tokens[c][:-1], V)
        bad_rows = np.nonzero(~np.isfinite(got).all(axis=-1))[0]
        if len(bad_rows):  # NaN compares false with every limit: fail it explicitly
            violations.append(f"non-finite logits (NaN or inf) at case {c} "
                              f"{_where(int(bad_rows[0]), T)}")
            got = np.nan_to_num(got, nan=0.0, posinf=1e30, neginf=-1e30)
        err = M.abs_err_rows(got, exact)
        r = int(err.argmax())
        if err[r] > abs_worst[0]:
            abs_worst = (float(err[r]), f"case {c} {_where(r, T)}")
        case_nmse = M.nmse(got, exact)
        if case_nmse > nmse_worst[0]:
            nmse_worst = (case_nmse, f"case {c}")
        cos = M.cosine_rows(got, exact)
        r = int(cos.argmin())
        if cos[r] < cos_worst[0]:
            cos_worst = (float(cos[r]), f"case {c} {_where(r, T)}")
        top1_hits += int(M.top1_rows(got, exact).sum())
        top1_fp32_hits += int(M.top1_rows(got, fp32).sum())
        kl = M.kld_rows(fp32, got)
        r = int(kl.argmax())
        if kl[r] > kld_worst[0]:
            kld_worst = (float(kl[r]), f"case {c} {_where(r, T)}")
        kld_sum += float(kl.sum())
        ref_kld_sum += float(M.kld_rows(fp32, exact).sum())
        rows_total += got.shape[0]
        nll_sum += float(M.nll_rows(got[:T - 1], prompt[1:]).sum())
        fp32_nll_sum += float(M.nll_rows(fp32[:T - 1], prompt[1:]).sum())

        # Greedy: where does the runtime's argmax leave the reference's greedy path?
        chosen = got[T - 1:].argmax(axis=-1)
        step = M.prefix_match(chosen, ref.tokens[c])
        if step < S:
            row = T - 1 + step
            mine, theirs = int(chosen[step]), int(ref.tokens[c][step])
            gap = float(exact[row, theirs] - exact[row, mine])
            # Two logits closer than twice the error this runtime shows (capped at what the
            # tolerance allows) may swap order legitimately; anything wider is a wrong choice.
            tie = 2.0 * min(float(err.max()), abs_limit) + tol.atol
            if gap > tie:
                violations.append(
                    f"greedy: case {c} generated token {step + 1} (logits of position {row}): "
                    f"runtime chose token {mine}, the reference {theirs}, which it prefers by "
                    f"{gap:.4g} logits (> tie tolerance {tie:.3g})"
                )
            own, _ = run_greedy(runner, prompt, S, V)  # the runtime's own continuation
        else:
            own = ref.tokens[c]
        greedy.append(M.prefix_match(own, ref.tokens[c]) / S)
        greedy_fp32.append(M.prefix_match(own, ref.fp32_tokens[c]) / S)

    values = {
        M.MAX_ABS: abs_worst[0], M.NMSE: nmse_worst[0], M.COSINE: cos_worst[0],
        M.TOP1: top1_hits / rows_total, M.GREEDY_MATCH: float(np.mean(greedy)),
        M.KLD: kld_sum / rows_total, M.TOP1_FP32: top1_fp32_hits / rows_total,
        M.GREEDY_MATCH_FP32: float(np.mean(greedy_fp32)), M.REF_KLD: ref_kld_sum / rows_total,
    }
    if inputs.text:  # the next token of the text at each prompt position
        n = len(inputs.prompts) * (T - 1)
        values[M.PERPLEXITY] = float(np.exp(nll_sum / n))
        values[M.PERPLEXITY_FP32] = float(np.exp(fp32_nll_sum / n))
    checks = [
        (M.MAX_ABS, values[M.MAX_ABS] > abs_limit, f"<= {abs_limit:.3g} (atol {tol.atol:.3g} + "
         f"rtol {tol.rtol:g} x max|logit| {scale:.3g})", abs_worst[1], "exact"),
        (M.NMSE, values[M.NMSE] > tol.nmse, f"<= {tol.nmse:g}", nmse_worst[1], "exact"),
        (M.COSINE, values[M.COSINE] < tol.cosine, f">= {tol.cosine:g}", cos_worst[1], "exact"),
        (M.TOP1, values[M.TOP1] < tol.top1, f">= {tol.top1:g}", "all positions", "exact"),
        (M.KLD, values[M.KLD] > tol.kld, f"<= {tol.kld:.4g} "
         + (f"({tol.kld_source}) " if tol.kld_source else "")
         + f"(worst {kld_worst[0]:.3g} at {kld_worst[1]})", "mean over positions", "fp32"),
        (M.TOP1_FP32, values[M.TOP1_FP32] < tol.top1_fp32, f">= {tol.top1_fp32:.3g}"
         + (f" ({tol.top1_source})" if tol.top1_source else ""), "all positions", "fp32"),
    ]
    exact_label = ("quantization-exact reference" if ref.name != FP32_REFERENCE
                   else "reference (fp32 weights, as stored)")
    broken = [
        f"{name} {values[name]:.4g} (at {where}, vs the "
        f"{exact_label if which == 'exact' else 'fp32 reference'}) breaks {limit}"
        for name, bad, limit, where, which in checks if bad
    ]
    if tol.noise_source and any(bad and which == "exact" for _, bad, _, _, which in checks):
        broken.append(f"(conformance limits: {tol.noise_source})")
    violations = broken + violations
    if violations:
        return GoldenStatus.FAILED, "; ".join(violations), values
    return GoldenStatus.PASSED, None, values


def judge(runner: "Runner", inputs: GoldenInputs, ref: ReferenceData, tol: Tolerance,
          reference_path: str) -> GoldenResult:
    """`compare`, turning a runtime crash into a failed result instead of an exception."""
    try:
        status, reason, values = compare(runner, inputs, ref, tol)
    except Exception as err:  # noqa: BLE001 - a crashing runtime is a failed artifact
        return GoldenResult(GoldenStatus.FAILED, f"runtime error: {type(err).__name__}: {err}",
                            reference=reference_path, limits=tol.limits())
    return GoldenResult(status, reason, values, reference_path, tol.limits())


def load_runner(target: "Target", artifact: "Artifact", build_dir: Path
                ) -> tuple["Runner | None", GoldenResult | None]:
    """`target.load`, mapping NotRunnable to not_run and any other error to failed."""
    from omnic.targets.base import NotRunnable

    try:
        return target.load(artifact, build_dir), None
    except NotRunnable as err:
        return None, GoldenResult(GoldenStatus.NOT_RUN, str(err) or "not runnable on this host")
    except Exception as err:  # noqa: BLE001
        return None, GoldenResult(GoldenStatus.FAILED,
                                  f"could not load: {type(err).__name__}: {err}")


class GoldenSession:
    """Compile-time golden checks: owns the references built from the true decoder.

    Args:
        decoder: the decoder the compiler built (fp32, never the lowered/faulted program's).
        inputs: the golden inputs.
        build_dir: the build being written; references are saved to build_dir/golden/.
        overrides: the spec's golden.tolerances.
    """

    def __init__(self, decoder: Any, inputs: GoldenInputs, build_dir: Path,
                 overrides: Mapping[str, float] | None = None,
                 plan: Mapping[str, Any] | None = None, max_kld: float | None = None,
                 spec: Any = None):
        self.decoder = decoder
        self.spec = spec  # the resolved spec: what a target's structural check compares with
        self.inputs = inputs
        self.build_dir = build_dir
        self.overrides = dict(overrides or {})
        self.plan = dict(plan or {})  # the quant plan: the field reference's recipe
        self.max_kld = max_kld  # the spec's golden.max_kld
        self.vocab = int(decoder.config.vocab_size) if hasattr(decoder, "config") else None
        self._refs: dict[str, ReferenceData] = {}
        self._noise: dict[str, noise.ReferenceNoise | None] = {}  # per exact reference
        self._fp32_runner = None
        self.golden_dir = build_dir / GOLDEN_DIR
        save_npz(self.golden_dir / INPUTS_FILE, {
            "prompts": inputs.prompts, "decode_steps": np.asarray(inputs.decode_steps),
            "seed": np.asarray(inputs.seed), **({"text": np.asarray(True)} if inputs.text else {})})

    def _runner(self, decoder: Any) -> "Runner":
        from omnic.runtime.torch_runner import TorchRunner

        # a cache as long as the golden paths, not the model's context: the same numbers up to
        # float rounding (1.8e-7, tests/runtime/test_cache.py), and
        # not 2 x layers x context_length x kv width of zeros per reference (0.8 GB at 0.5B)
        positions = int(np.asarray(self.inputs.prompts).shape[1]) + self.inputs.decode_steps
        return TorchRunner(decoder, positions=positions)

    def _vocab(self) -> int:
        if self.vocab is None:
            self.vocab = int(self.decoder.state_dict()["embed.weight"].shape[0])
        return self.vocab

    def fp32(self) -> ReferenceData:
        if FP32_REFERENCE not in self._refs:
            self._fp32_runner = self._runner(self.decoder)
            with pages.released_after_each_block(self.decoder):
                ref = reference_data(FP32_REFERENCE, self._fp32_runner, self._fp32_runner,
                                     self.inputs, self._vocab())
            ref.save(self.golden_dir)
            self._refs[FP32_REFERENCE] = ref
        return self._refs[FP32_REFERENCE]

    def reference_for(self, artifact: "Artifact", tol: Tolerance) -> ReferenceData:
        """The quantization-exact reference of an artifact (the fp32 one when it stores fp32)."""
        fp32 = self.fp32()
        weights = artifact.reference_weights
        if not weights:
            return fp32
        import torch

        state = self.decoder.state_dict()
        unknown = sorted(set(weights) - set(state))
        if unknown:
            raise GoldenReferenceError(
                f"reference_weights name tensors the decoder does not have: {unknown[:5]}")
        digest = hashlib.sha256()  # weights_digest, in the same pass: a lazily dequantized
        for name in sorted(weights):  # tensor is then dequantized once here, not twice
            w = np.asarray(weights[name], dtype=np.float32)
            _digest_update(digest, name, w)
            true = state[name].detach().float().numpy()
            if w.shape != true.shape:
                raise GoldenReferenceError(
                    f"reference_weights[{name}] has shape {list(w.shape)}, the model "
                    f"{list(true.shape)}")
            err = weight_nmse(w, true)
            pages.release([true])  # a memory-mapped checkpoint's pages: read once here
            limit = weight_limit(tol, artifact.target, self.plan.get(name), self.overrides)
            if not err <= limit:
                raise GoldenReferenceError(
                    f"reference_weights[{name}] is not a quantization of the model's tensor: "
                    f"nmse {err:.3g} against the fp32 weights > weight_nmse {limit:g}")
        rounding = artifact.activation_quant or {}
        digest.update(activations.digest_key(rounding).encode())
        name = "exact-" + digest.hexdigest()[:12]
        if name not in self._refs:
            model = with_weights(self.decoder, weights)
            if model is None:  # a name that is not a parameter: the general (copying) path
                model = copy.deepcopy(self.decoder)
                merged = {k: (torch.from_numpy(np.asarray(weights[k], dtype=np.float32).copy())
                              if k in weights else v) for k, v in state.items()}
                model.load_state_dict(merged, strict=True)
            try:
                activations.apply(model, rounding)
            except ValueError as err:
                raise GoldenReferenceError(str(err)) from None
            with pages.released_after_each_block(self.decoder):  # its forced fp32 runs
                ref = reference_data(name, self._runner(model), self._fp32_runner, self.inputs,
                                     self._vocab(), fp32=fp32)
            if rounding:  # int8 activations: how far the reference moves against itself
                self._noise[name] = noise.measure(
                    model, self._runner, lambda twin: compare(twin, self.inputs, ref, tol)[2])
            del model
            ref.save(self.golden_dir)
            self._refs[name] = ref
        return self._refs[name]

    @functools.cached_property
    def field_cost(self) -> "field.FieldCost | None":
        """What the field's reference quantization of the plan costs (None: nothing quantized);
        measured once, when a quantized artifact first needs its budget."""
        if not field.quantized(self.plan):
            return None
        fp32 = self.fp32()
        weights, rounding, method = field.field_weights(self.decoder.state_dict(), self.plan)
        model = with_weights(self.decoder, weights)
        if model is None:
            return None
        activations.apply(model, rounding, strict=False)
        with pages.released_after_each_block(self.decoder):
            ref = reference_data("field", self._runner(model), self._fp32_runner, self.inputs,
                                 self._vocab(), fp32=fp32)
        del model
        pairs = list(zip(ref.fp32_logits, ref.logits))
        kl = np.concatenate([M.kld_rows(f, g) for f, g in pairs])
        top1 = np.concatenate([M.top1_rows(g, f) for f, g in pairs])
        return field.FieldCost(float(kl.mean()), method, float(top1.mean()))

    def budget(self, tol: Tolerance, artifact: "Artifact") -> Tolerance:
        """`tol` with the quality limits of a quantized artifact set by the field reference
        (omnic.golden.field.judged_by)."""
        if family(artifact.precision) not in ("int4", "int8"):
            return tol
        keys = overridden(self.overrides, artifact.target, artifact.precision)
        cost = None if "kld" in keys and "top1_fp32" in keys else self.field_cost
        return field.judged_by(tol, cost, self.max_kld, keys)

    def _structure(self, target: "Target", artifact: "Artifact",
                   not_run: GoldenResult) -> GoldenResult:
        """A runtime this host cannot run (Core ML off macOS): its target's structural check,
        when it has one, turns not_run into failed when the artifact is malformed, and says it
        ran otherwise."""
        check = getattr(target, "structural_check", None)
        if not_run.status != GoldenStatus.NOT_RUN or check is None or self.spec is None:
            return not_run
        try:
            failures = check(artifact, self.build_dir, self.spec)
        except Exception as err:  # noqa: BLE001 - an unreadable package is a failed artifact
            failures = [f"{type(err).__name__}: {err}"]
        if failures:
            return replace(not_run, status=GoldenStatus.FAILED,
                           reason="structural check failed: " + "; ".join(failures[:5]))
        return replace(not_run, reason=f"{not_run.reason} (structure checked: I/O, KV states, "
                       "ops, weight compression, precision)")

    def check(self, target: "Target", artifact: "Artifact") -> GoldenResult:
        """Load the artifact on its runtime and judge it. Never raises for a bad artifact."""
        try:
            tol = self.budget(lookup(artifact.target, artifact.precision, self.overrides),
                              artifact)
        except ToleranceError as err:
            return GoldenResult(GoldenStatus.FAILED, str(err))
        try:
            ref = self.reference_for(artifact, tol)
        except GoldenReferenceError as err:
            return GoldenResult(GoldenStatus.FAILED, str(err), limits=tol.limits())
        ref_path = f"{GOLDEN_DIR}/{ref.filename}"
        moved = self._noise.get(ref.name)
        if moved is not None:
            tol = moved.widen(tol, float(np.abs(ref.logits).max()), frozenset(
                overridden(self.overrides, artifact.target, artifact.precision)))
        runner, early = load_runner(target, artifact, self.build_dir)
        if early is not None:
            early.reference, early.limits = ref_path, tol.limits()
            return self._structure(target, artifact, early)
        try:
            result = judge(runner, self.inputs, ref, tol, ref_path)
        finally:
            del runner
        cost = self.field_cost if tol.kld_source or tol.top1_source else None
        if cost is not None:
            result.metrics[M.FIELD_KLD] = cost.kld
            result.metrics[M.FIELD_TOP1] = cost.top1
        if moved is not None:
            result.metrics.update(moved.metrics())
        return result


def load_inputs(build_dir: Path) -> GoldenInputs:
    a = load_npz(build_dir / GOLDEN_DIR / INPUTS_FILE)
    return GoldenInputs(a["prompts"], int(a["decode_steps"]), int(a["seed"]),
                        text=bool(a.get("text", False)))


def verify_artifact(target: "Target", artifact: "Artifact", build_dir: Path, reference: str,
                    overrides: Mapping[str, float] | None = None,
                    limits: Mapping[str, float] | None = None) -> GoldenResult:
    """Re-run one artifact's golden check from a build's saved golden/ files (no torch needed).

    `limits`: those the build recorded (its manifest), which include a KLD budget measured at
    compile time; without them the table's row and `overrides` apply."""
    inputs = load_inputs(build_dir)
    try:
        tol = lookup(artifact.target, artifact.precision, overrides)
        if limits and all(k in limits for k in METRIC_KEYS):
            tol = Tolerance.recorded(limits, "the limits the build recorded")
    except ToleranceError as err:
        return GoldenResult(GoldenStatus.FAILED, str(err))
    ref = ReferenceData.load(build_dir / reference)
    runner, early = load_runner(target, artifact, build_dir)
    if early is not None:
        early.reference, early.limits = reference, tol.limits()
        return early
    return judge(runner, inputs, ref, tol, reference)
