"""Validate a spec file: every error at once, each as `FILE:LINE:COL field.path: message`.

Stages, each adding diagnostics and never stopping at the first one:
1. YAML, `extends:` merging and the pydantic models (`omnic.spec.validate.read_spec`);
2. presets (unknown names with did-you-mean; invalid preset files), a model too large to plan
   tensor by tensor (MAX_TENSORS), and `quantization: auto` planned with its worst case
   (`omnic.compiler.auto_quant`);
3. semantic checks on the resolved spec: tokenizer, paths, encoder checkpoints, quantization
   plan, target capabilities (`omnic.targets.rules`), golden lengths, every weights and tokenizer
   file opened and checked (`omnic.importers.checkpoint_checks`: headers, truncation, coverage,
   NaN/Inf), and the memory plan against the device budget (naming device presets that would fit).

A compiler stage (it reads presets, quantization selection, checkpoints, the memory plan and the
targets' rules), yet torch-free, like everything `omnic validate` and `omnic plan` import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from omnic.compiler.auto_quant import resolve_with_auto
from omnic.compiler.plan import MIB, MemoryPlan, plan_memory
from omnic.constants import Targets
from omnic.importers import checkpoint_checks as checks
from omnic.importers import hf_encoders
from omnic.importers.hf import UnsupportedModel
from omnic.presets import store
from omnic.presets.resolve import explicit_model
from omnic.presets.resolve import resolve as resolve_presets
from omnic.quant.select import matches, scheme_for
from omnic.spec.extends import PATH_FIELDS
from omnic.spec.inventory import decoder_tensors
from omnic.spec.load import Diagnostic, Document, FieldPath, SpecError, read_yaml
from omnic.spec.model import Model
from omnic.spec.spec import ResolvedSpec, Spec
from omnic.spec.validate import did_you_mean, pydantic_diagnostics, read_spec
from omnic.targets import rules

BYTE_TOKENIZER_MIN_VOCAB = 259  # 256 bytes + <s>, </s>, <pad> (see omnic/tokenizer.py)
# Tensors omnic lists one by one (inventory, quantization plan, memory plan). The largest
# published models have under 50,000 (DeepSeek-V3: 61 layers x 256 experts x 3); a declared
# n_layers or expert count past this would keep the planner busy for hours.
MAX_TENSORS = 1_000_000


@dataclass
class Validation:
    """The outcome of validating one spec file."""

    file: str
    doc: Document | None = None  # the merged YAML, with the location of every field
    spec: Spec | None = None
    resolved: ResolvedSpec | None = None
    plan: MemoryPlan | None = None  # when the spec resolved and has no error
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # The real (resolved) path of every file the spec names, as checked: {"weights.path": ...}
    inputs: dict[str, Path] = field(default_factory=dict)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


# --- presets ------------------------------------------------------------------------------------
def _inline_presets(spec: Spec, doc: Document) -> tuple[ResolvedSpec | None, list[Diagnostic]]:
    """The spec with every preset inlined, or None with a located diagnostic per bad preset."""
    found, out = {}, []
    for kind in store.KINDS:
        value = getattr(spec, kind)
        if not isinstance(value, str):
            found[kind] = value
            continue
        if kind == "quantization" and value == "auto":
            continue  # auto_quant: decided below, once device and model are known
        try:
            path = store.path_of(kind, value)
        except store.UnknownPreset as unknown:
            out.append(Diagnostic(doc.locate((kind,)), (kind,), str(unknown)))
            continue
        pdoc, problems = read_yaml(path)
        out += problems
        if pdoc is None:
            continue
        cls = ResolvedSpec.model_fields[kind].annotation  # Device, Model or Quantization
        try:
            found[kind] = cls.model_validate(pdoc.data)
        except ValidationError as err:
            out += pydantic_diagnostics(err, pdoc, cls, (kind,))
    if out:
        return None, out
    too_many = _too_many_tensors(found["model"], spec)
    if too_many:
        return None, [Diagnostic(doc.locate(("model", "n_layers")), ("model", "n_layers"),
                                 too_many)]
    fields = {name: getattr(spec, name) for name in Spec.model_fields}
    fields.update(found, extends=(), model=explicit_model(found["model"]))
    if "quantization" not in found:  # quantization: auto, planned with its worst case
        resolved, why = resolve_with_auto(fields)
        if resolved is None:
            return None, [Diagnostic(doc.locate(("quantization",)), ("quantization",), why)]
        note = (f"auto (decided at compile by measured quality); validated and planned with "
                f"{why}, the largest eligible preset (compile may keep a few int4 matrices at "
                "int8, within the budget)")
        return resolved, [Diagnostic(doc.locate(("quantization",)), ("quantization",), note,
                                     "warning")]
    return ResolvedSpec(**fields), []


def _too_many_tensors(model: Model, spec: Spec) -> str | None:
    """Why the model has too many tensors to plan one by one (a closed-form upper bound)."""
    experts = model.moe.experts + model.moe.shared_experts if model.moe else 1
    per_layer = 16 + 3 * experts  # norms, q/k/v/o and their biases, router, FFN matrices
    count = 3 + model.n_layers * per_layer
    for encoder in (spec.modalities.vision, spec.modalities.audio):
        count += 16 * encoder.n_layers + 16 if encoder is not None else 0
    if count <= MAX_TENSORS:
        return None
    what = f"{model.n_layers:,} layers" + (f" of {experts:,} experts" if model.moe else "")
    return (f"{what} make about {count:,} tensors, more than the {MAX_TENSORS:,} omnic plans "
            "one by one (published models have under 50,000)")


# --- semantic checks ----------------------------------------------------------------------------
def _semantic(spec: ResolvedSpec, spec_dir: Path) -> Iterable[tuple[FieldPath, str, str]]:
    m, q = spec.model, spec.quantization
    if spec.tokenizer.kind == "byte" and m.vocab_size < BYTE_TOKENIZER_MIN_VOCAB:
        yield (("model", "vocab_size"), f"the byte tokenizer needs vocab_size >= "
               f"{BYTE_TOKENIZER_MIN_VOCAB} (256 bytes + bos, eos, pad), got {m.vocab_size}",
               "error")

    for section, kind in (("weights", spec.weights.source), ("tokenizer", spec.tokenizer.kind)):
        rel = getattr(getattr(spec, section), "path", None)
        if rel is None:
            continue
        where = spec_dir / rel
        if kind in ("safetensors", "gguf") and not where.is_file():
            yield ((section, "path"), f"no such file: {where}", "error")
        elif kind == "huggingface" and not where.is_dir():
            yield ((section, "path"), f"no such directory: {where}", "error")
        elif section == "tokenizer" and not (where / "tokenizer.json").is_file():
            yield ((section, "path"), f"no tokenizer.json in {where}", "error")
        elif (section == "weights" and kind == "huggingface"
              and not (where / "config.json").is_file()):
            yield ((section, "path"), f"no config.json in {where}", "error")

    for name in ("vision", "audio"):
        encoder = getattr(spec.modalities, name)
        if (encoder is not None and encoder.weights is not None
                and not (spec_dir / encoder.weights).is_dir()):
            yield (("modalities", name, "weights"),
                   f"no such directory: {spec_dir / encoder.weights}", "error")
    yield from _modality_checks(spec, spec_dir)

    tensors = decoder_tensors(m)
    quant_prefix = ("quantization",)
    # group_size must divide the input width of every matrix it applies to (one error per source).
    bad: dict[FieldPath, list] = {}
    for t in tensors:
        ts = scheme_for(q, t)
        if ts.group_size and t.shape[-1] % ts.group_size:
            src = quant_prefix + (("overrides", ts.override) if ts.override is not None
                                  else ("weights",))
            bad.setdefault(src + ("group_size",), []).append(t)
    for path, ts_list in bad.items():
        t = ts_list[0]
        more = f" (and {len(ts_list) - 1} more)" if len(ts_list) > 1 else ""
        yield (path, f"group_size {scheme_for(q, t).group_size} does not divide the input width "
               f"{t.shape[-1]} of {t.name}{more}", "error")

    # Overrides that choose nothing. A name regex that matches no tensor at all is almost surely a
    # typo, and silently quantizing differently from what was written is a bug no golden check
    # can see (the reference follows the same plan): error. A role or layer range that matches
    # nothing is legitimate in a quant preset shared across models (role lm_head on a tied model),
    # and an override fully shadowed by earlier ones is harmless: warnings.
    used = {scheme_for(q, t).override for t in tensors}
    for i, ov in enumerate(q.overrides):
        path = quant_prefix + ("overrides", i, "match")
        hits = [t for t in tensors if matches(ov.match, t)]
        if ov.match.name is not None and not any(re.fullmatch(ov.match.name, t.name)
                                                 for t in tensors):
            yield (path + ("name",), f"regex {ov.match.name!r} matches no tensor name (names look "
                   f"like {tensors[0].name!r}, 'layers.0.attn.q.weight')", "error")
        elif not hits:
            yield (path, "matches no tensor", "warning")
        elif not any(t.is_matrix for t in hits):
            yield (path, "matches only norms/biases, which always stay fp32", "warning")
        elif i not in used:
            yield (path, "every tensor it matches is taken by an earlier override", "warning")

    g = spec.golden
    if g.prompt_tokens + g.decode_steps > m.context_length:
        yield (("golden", "prompt_tokens"), f"prompt_tokens + decode_steps = "
               f"{g.prompt_tokens + g.decode_steps} exceeds context_length {m.context_length}",
               "error")
    for i, target in enumerate(spec.device.preferred_targets):
        if target not in Targets.ALL:
            yield (("device", "preferred_targets", i), f"unknown target {target!r}"
                   f"{did_you_mean(target, Targets.ALL)}", "error")
    if not spec.targets.enabled():
        yield (("targets",), "no target enabled; add at least one of " + ", ".join(Targets.ALL),
               "warning")

    for _, finding in rules.findings(spec):
        yield finding.path, finding.message, finding.severity


def _modality_checks(spec: ResolvedSpec, spec_dir: Path) -> Iterable[tuple[FieldPath, str, str]]:
    """Shapes the encoders' modules cannot be built with (omnic/model/encoders/)."""
    v, a = spec.modalities.vision, spec.modalities.audio
    for name, encoder, check in (("vision", v, hf_encoders.check_vision),
                                 ("audio", a, hf_encoders.check_audio)):
        where = spec_dir / encoder.weights if encoder is not None and encoder.weights else None
        if where is not None and where.is_dir():
            try:  # config.json only (torch-free): the numbers the import would refuse
                check(where, encoder)
            except (hf_encoders.EncoderMismatch, UnsupportedModel) as err:
                yield (("modalities", name, "weights"), str(err), "error")
    if v is not None:
        at = ("modalities", "vision")
        if v.image_size % v.patch_size:
            yield (at + ("image_size",), f"image_size {v.image_size} is not divisible by "
                   f"patch_size {v.patch_size}", "error")
        if v.d_model % v.n_heads:
            yield (at + ("n_heads",), f"n_heads {v.n_heads} does not divide d_model {v.d_model}",
                   "error")
        if v.projector == "pixel_shuffle_mlp":
            r = v.pixel_shuffle_factor
            if v.pooling != "none":
                yield (at + ("pooling",), "pixel_shuffle_mlp regroups the patch grid; it needs "
                       "pooling: none", "error")
            elif v.grid % r:
                yield (at + ("pixel_shuffle_factor",), f"pixel_shuffle_factor {r} does not divide "
                       f"the {v.grid}x{v.grid} patch grid (image_size/patch_size)", "error")
        for key, values in (("image_mean", v.image_mean), ("image_std", v.image_std)):
            if values is not None and len(values) != v.channels:
                yield (at + (key,), f"{key} has {len(values)} values for {v.channels} channels",
                       "error")
        if v.image_std is not None and any(x <= 0 for x in v.image_std):
            yield (at + ("image_std",), "image_std values must be > 0", "error")
    if a is not None:
        at = ("modalities", "audio")
        if a.d_model % a.n_heads:
            yield (at + ("n_heads",), f"n_heads {a.n_heads} does not divide d_model {a.d_model}",
                   "error")
        if a.d_model % 2 or a.d_model < 4:
            yield (at + ("d_model",), f"d_model {a.d_model} must be even and >= 4 (Whisper's "
                   "sinusoidal positions)", "error")
        if a.n_frames % 2:
            yield (at + ("n_frames",), f"n_frames {a.n_frames} must be even (the second "
                   "convolution has stride 2; Whisper takes 2 * max_source_positions frames)",
                   "error")
        elif a.n_positions % a.downsample:
            yield (at + ("downsample",), f"downsample {a.downsample} does not divide the "
                   f"{a.n_positions} encoder frames (n_frames/2)", "error")


def _fit(spec: ResolvedSpec, plan: MemoryPlan | None = None) -> tuple[MemoryPlan, str | None]:
    plan = plan if plan is not None else plan_memory(spec)
    if plan.fits:
        return plan, None
    fitting = []
    for name in store.names("device"):
        try:
            device = store.load("device", name)
        except Exception:  # an invalid user preset is reported when it is used, not here
            continue
        if name != spec.device.name and plan_memory(spec, device).fits:
            fitting.append((device.memory_budget_mb, name))
    fits = ", ".join(n for _, n in sorted(fitting)) or "none of the presets"
    msg = (f"needs {plan.total_bytes / MIB:.0f} MiB (weights {plan.weight_bytes / MIB:.0f}, "
           f"KV cache {plan.kv_cache_bytes / MIB:.0f}, activations "
           f"{plan.activation_bytes / MIB:.0f}, runtime "
           f"{plan.runtime_overhead_bytes / MIB:.0f}) but device {spec.device.name} allows "
           f"{spec.device.memory_budget_mb} MiB; fits: {fits}")
    return plan, msg


# --- entry points -------------------------------------------------------------------------------
# The steps of validate_file, each public so that `compile()` runs them as its load, resolve and
# validate stages (and its plan stage calls check_fit with the plan it makes anyway).
def load(path: Path | str, display: str | None = None) -> Validation:
    """Read the YAML, merge `extends:` and match the spec's models (never raises on bad input)."""
    result = Validation(display or str(path))
    result.doc, result.spec, result.diagnostics = read_spec(Path(path), display)
    return result


def inline_presets(result: Validation) -> Validation:
    """Inline every preset of a loaded spec into `result.resolved` (None when one is bad).
    YAML-level errors found by `load` (duplicates, extends) do not stop this step."""
    if result.spec is not None:
        result.resolved, problems = _inline_presets(result.spec, result.doc)
        result.diagnostics += problems
    return result


def _files(result: Validation, spec_dir: Path, refused: set[FieldPath]
           ) -> Iterable[tuple[FieldPath, str, str]]:
    """Every weights, tokenizer and encoder file opened and checked as the build will read it;
    a `refused` path (one leading out of the spec's folder) is not opened."""
    spec = result.resolved
    clock = checks.Clock()  # one scan budget for all of them
    named = [(("weights", "path"), spec.weights.source, getattr(spec.weights, "path", None)),
             (("tokenizer", "path"), spec.tokenizer.kind, getattr(spec.tokenizer, "path", None))]
    for name in ("vision", "audio"):
        encoder = getattr(spec.modalities, name)
        named.append((("modalities", name, "weights"), "encoder",
                      encoder.weights if encoder is not None else None))
    for fpath, kind, rel in named:
        if rel is None or fpath in refused:
            continue
        where = spec_dir / rel
        result.inputs[".".join(fpath)] = where.resolve()
        found: Iterable[tuple[str, str]] = ()
        if fpath[0] == "weights" and kind == "safetensors" and where.is_file():
            found = checks.check_safetensors(where, decoder_tensors(spec.model), clock)
        elif fpath[0] == "weights" and kind == "gguf" and where.is_file():
            found = checks.check_gguf(where, spec.model, clock)
        elif fpath[0] == "weights" and kind == "huggingface" and (where / "config.json").is_file():
            found = checks.check_hf_dir(where, decoder_tensors(spec.model), clock)
        elif fpath[0] == "tokenizer" and where.is_dir():
            found = checks.check_tokenizer(where)
        elif kind == "encoder" and (where / "config.json").is_file():
            found = checks.check_headers(where)
        for severity, message in found:
            yield fpath, message, severity
    yield from _calibration_text(spec, spec_dir)


def _calibration_text(spec: ResolvedSpec, spec_dir: Path) -> Iterable[tuple[FieldPath, str, str]]:
    """The calibration text of a calibrated method, read as the calibrate stage reads it."""
    cal = spec.quantization.calibration
    if cal is None:
        return
    from omnic.quant.calibration_text import BUILTIN, load_texts

    if cal.text == BUILTIN:
        return
    try:
        load_texts(cal.text, spec_dir)
    except ValueError as err:
        yield ("quantization", "calibration", "text"), str(err), "error"


def check_resolved(result: Validation, spec_dir: Path) -> Validation:
    """The semantic checks of a resolved spec (section 3 of the module docstring), device
    budget excepted (`check_fit`)."""
    if result.resolved is not None:
        # paths refused as written (leading out of the spec's folder) are neither looked for
        # nor opened
        refused = {d.path for d in result.errors if d.path in PATH_FIELDS}
        found = [f for f in _semantic(result.resolved, spec_dir) if f[0] not in refused]
        found += _files(result, spec_dir, refused)
        for fpath, message, severity in found:
            result.diagnostics.append(Diagnostic(result.doc.locate(fpath), fpath, message,
                                                 severity))
    return result


def check_fit(result: Validation, plan: MemoryPlan | None = None) -> Validation:
    """The memory plan against the device's budget, naming the device presets that would fit.

    Args:
        plan: the resolved spec's plan when the caller has made it; planned here otherwise.
    """
    if result.resolved is not None:
        result.plan, too_big = _fit(result.resolved, plan)
        if too_big:
            result.diagnostics.append(Diagnostic(result.doc.locate(("device",)), ("device",),
                                                 too_big))
    return result


def validate_file(path: Path | str, display: str | None = None) -> Validation:
    """Validate one spec file and collect every diagnostic (never raises on bad input)."""
    result = check_resolved(inline_presets(load(path, display)), Path(path).parent)
    return check_fit(result) if result.ok else result


def load_spec(path: Path | str) -> Spec:
    """The spec as written (extends merged), or SpecError with every error."""
    result = validate_file(path)
    if result.spec is None or not result.ok:
        raise SpecError(result.errors)
    return result.spec


def load_resolved(path: Path | str) -> ResolvedSpec:
    """Validate a spec file and return it resolved; raises SpecError listing every error.

    This is what `omnic compile` and every other command that needs a spec call.
    """
    result = validate_file(path)
    if not result.ok or result.resolved is None:
        raise SpecError(result.errors)
    return result.resolved


def resolve(spec: Spec, spec_dir: Path | str) -> ResolvedSpec:
    """`omnic.presets.resolve` with `quantization: auto` planned by its worst case (auto_quant).

    Raises:
        omnic.presets.store.UnknownPreset: a preset name does not exist.
        omnic.spec.load.SpecError: see `omnic.presets.resolve.resolve`.
    """
    return resolve_presets(spec, spec_dir, auto=resolve_with_auto)
