"""Validate a spec file: every error at once, each as `FILE:LINE:COL field.path: message`.

Stages, each adding diagnostics and never stopping at the first one:
1. YAML (syntax errors, duplicate keys) and `extends:` merging (missing files, cycles);
2. the pydantic models (types, unknown keys with did-you-mean, sizes, closed vocabularies);
3. presets (unknown names with did-you-mean; invalid preset files);
4. semantic checks on the resolved spec: tokenizer, paths, quantization plan, target
   capabilities (`omnic.spec.capabilities`), golden lengths, and the memory plan against the
   device budget (naming device presets that would fit).

Torch-free, like everything `omnic validate` and `omnic plan` import.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from omnic.spec.extends import load_with_extends
from omnic.spec.load import Diagnostic, Document, FieldPath, SpecError, read_yaml
from omnic.spec.spec import ResolvedSpec, Spec

BYTE_TOKENIZER_MIN_VOCAB = 259  # 256 bytes + <s>, </s>, <pad> (see omnic/tokenizer.py)


@dataclass
class Validation:
    """The outcome of validating one spec file."""

    file: str
    spec: Spec | None = None
    resolved: ResolvedSpec | None = None
    plan: Any = None  # omnic.compiler.plan.MemoryPlan when the spec resolved
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


# --- pydantic errors -> located diagnostics -----------------------------------------------------
def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside an annotation (through Optional, Union, Annotated, tuple)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is Literal:
        return []
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out += _model_classes(arg)
    return out


def _tags(cls: type[BaseModel]) -> set[str]:
    """Names pydantic uses for a union member in error locations: class name, discriminator."""
    out = {cls.__name__}
    for f in cls.model_fields.values():
        if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1:
            out.add(str(get_args(f.annotation)[0]))
    return out


@dataclass
class _Walk:
    path: FieldPath  # the data path (union tags removed)
    classes: list[type[BaseModel]]  # candidate models at the end of the path
    parent_classes: list[type[BaseModel]]
    value: Any  # the raw value at the path (None when missing)
    present: bool
    str_branch: bool  # the error comes from the `str` (preset name) member of a union


def _walk(root: type[BaseModel], data: Any, loc: tuple) -> _Walk:
    classes, parents, node, present = [root], [], data, True
    path: list[Any] = []
    str_branch = False
    for el in loc:
        if isinstance(el, int):
            path.append(el)
            ok = isinstance(node, list) and 0 <= el < len(node)
            node, present = (node[el] if ok else None), present and ok
            continue
        owners = [c for c in classes if el in c.model_fields]
        if owners:
            path.append(el)
            parents = classes
            ok = isinstance(node, dict) and el in node
            node, present = (node[el] if ok else None), present and ok
            classes = [m for c in owners for m in _model_classes(c.model_fields[el].annotation)]
        elif isinstance(node, dict) and el in node:  # an unknown key, or a dict-valued field
            path.append(el)
            parents, classes, node = classes, [], node[el]
        else:  # a union member tag
            if el == "str":
                str_branch = True
            matched = [c for c in classes if el in _tags(c) or el.endswith(f", {c.__name__}]")]
            classes = matched or classes
    return _Walk(tuple(path), classes, parents, node, present, str_branch)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_MESSAGES = {
    "int": "expected an integer", "float": "expected a number", "bool": "expected true or false",
    "string": "expected a string", "dict": "expected a mapping", "model": "expected a mapping",
    "list": "expected a list", "tuple": "expected a list", "literal": None,
}


def _message(err: dict, walk: _Walk) -> tuple[FieldPath, str] | None:
    """A readable message for one pydantic error, and the field path it belongs to."""
    kind, ctx, value, path = err["type"], err.get("ctx") or {}, err.get("input"), walk.path
    if walk.str_branch:
        if isinstance(walk.value, (dict, str)):
            return None  # a mapping was given: the errors of the model member speak for it
        return path, f"expected a preset name or a mapping, got {_short(value)}"
    if kind in ("model_type", "dict_type") and _accepts_str(walk):
        return None  # reported once, by the str (preset name) member of the union
    if kind == "missing":
        return path, "required field is missing"
    if kind == "extra_forbidden":
        options = {n for c in walk.parent_classes for n in c.model_fields}
        return path, f"unknown key {path[-1]!r}{_did_you_mean(path[-1], options)}"
    if kind == "literal_error":
        expected = [s.strip().strip("'") for s in re.split(r",| or ", ctx.get("expected", "")) if s.strip()]
        return path, (f"must be one of {', '.join(expected)}, got {_short(value)}"
                      f"{_did_you_mean(value, expected)}")
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",")]
        key = ctx.get("discriminator", "").strip("'")
        return path + (key,), (f"{key} {ctx.get('tag')!r} is not one of {', '.join(tags)}"
                               f"{_did_you_mean(ctx.get('tag'), tags)}")
    if kind == "union_tag_not_found":
        key = ctx.get("discriminator", "").strip("'")
        tags = sorted({t for c in walk.classes for t in _tags(c) if t != c.__name__})
        return path, f"missing {key!r} (one of {', '.join(tags)})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}[kind]
        return path, f"must be {op[0]} {ctx.get(op[1])}, got {_short(value)}"
    if kind == "string_pattern_mismatch":
        return path, f"{_short(value)} does not match {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        return _pinpoint(path, text, walk), text
    head = kind.split("_")[0]
    if head in _TYPE_MESSAGES and _TYPE_MESSAGES[head] and kind.endswith(("_type", "_parsing", "_from_float")):
        detail = ", not a fraction" if kind == "int_from_float" else ""
        return path, f"{_TYPE_MESSAGES[head]}{detail}, got {_short(value)}"
    return path, f"{err['msg']}, got {_short(value)}" if "input" in err else err["msg"]


def _accepts_str(walk: _Walk) -> bool:
    """The field at the end of the walk is `str | Model` (a preset name or an inline block)."""
    if not walk.path or not isinstance(walk.path[-1], str):
        return False
    for cls in walk.parent_classes:
        f = cls.model_fields.get(walk.path[-1])
        if f is not None and str in get_args(f.annotation):
            return True
    return False


def _pinpoint(path: FieldPath, text: str, walk: _Walk) -> FieldPath:
    """The field a model-level check is about: `field=value` first, else the only field named."""
    fields = {n for c in walk.classes for n in c.model_fields}
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*=?", text)
    for w in words:
        if w.endswith("=") and w[:-1] in fields:
            return path + (w[:-1],)
    if words and words[0] in fields:
        return path + (words[0],)
    named = [w for w in dict.fromkeys(words) if w in fields]
    return path + (named[0],) if len(named) == 1 else path


def pydantic_diagnostics(err: ValidationError, doc: Document, root: type[BaseModel],
                         prefix: FieldPath = ()) -> list[Diagnostic]:
    """Map pydantic errors to located diagnostics (one per field and message)."""
    out, seen = [], set()
    for e in err.errors():
        walk = _walk(root, doc.data, tuple(e["loc"]))
        msg = _message(e, walk)
        if msg is None:
            continue
        path, text = msg
        key = (path, text)
        if key in seen:
            continue
        seen.add(key)
        out.append(Diagnostic(doc.locate(path), prefix + path, text))
    return out


# --- presets ------------------------------------------------------------------------------------
def _resolve(spec: Spec, doc: Document, spec_dir: Path) -> tuple[ResolvedSpec | None, list[Diagnostic]]:
    from omnic.presets import store
    from omnic.presets.resolve import explicit_model

    found, out = {}, []
    for kind in store.KINDS:
        value = getattr(spec, kind)
        if not isinstance(value, str):
            found[kind] = value
            continue
        if kind == "quantization" and value == "auto":
            continue  # omnic.quant.auto: decided below, once device and model are known
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
    fields = {name: getattr(spec, name) for name in Spec.model_fields}
    fields.update(found, extends=(), model=explicit_model(found["model"]))
    if "quantization" not in found:  # quantization: auto, planned with its worst case
        from omnic.quant.auto import resolve_with_auto

        resolved, why = resolve_with_auto(fields)
        if resolved is None:
            return None, [Diagnostic(doc.locate(("quantization",)), ("quantization",), why)]
        note = (f"auto (decided at compile by measured quality); validated and planned with "
                f"{why}, the largest eligible preset (the worst case)")
        return resolved, [Diagnostic(doc.locate(("quantization",)), ("quantization",), note,
                                     "warning")]
    return ResolvedSpec(**fields), []


# --- semantic checks ----------------------------------------------------------------------------
def _semantic(spec: ResolvedSpec, spec_dir: Path) -> Iterable[tuple[FieldPath, str, str]]:
    from omnic.constants import Targets
    from omnic.quant.select import matches, scheme_for
    from omnic.spec import capabilities
    from omnic.spec.inventory import decoder_tensors

    m, q = spec.model, spec.quantization
    if spec.tokenizer.kind == "byte" and m.vocab_size < BYTE_TOKENIZER_MIN_VOCAB:
        yield (("model", "vocab_size"), f"the byte tokenizer needs vocab_size >= "
               f"{BYTE_TOKENIZER_MIN_VOCAB} (256 bytes + bos, eos, pad), got {m.vocab_size}", "error")

    for section, kind in (("weights", spec.weights.source), ("tokenizer", spec.tokenizer.kind)):
        rel = getattr(getattr(spec, section), "path", None)
        if rel is None:
            continue
        where = spec_dir / rel
        if kind == "safetensors" and not where.is_file():
            yield ((section, "path"), f"no such file: {where}", "error")
        elif kind == "huggingface" and not where.is_dir():
            yield ((section, "path"), f"no such directory: {where}", "error")
        elif section == "tokenizer" and not (where / "tokenizer.json").is_file():
            yield ((section, "path"), f"no tokenizer.json in {where}", "error")
        elif section == "weights" and kind == "huggingface" and not (where / "config.json").is_file():
            yield ((section, "path"), f"no config.json in {where}", "error")

    for name in ("vision", "audio"):
        encoder = getattr(spec.modalities, name)
        if encoder is not None and encoder.weights is not None and not (spec_dir / encoder.weights).is_dir():
            yield (("modalities", name, "weights"), f"no such directory: {spec_dir / encoder.weights}", "error")
    yield from _modality_checks(spec, spec_dir)

    tensors = decoder_tensors(m)
    quant_prefix = ("quantization",)
    # group_size must divide the input width of every matrix it applies to (one error per source).
    bad: dict[FieldPath, list] = {}
    for t in tensors:
        ts = scheme_for(q, t)
        if ts.group_size and t.shape[-1] % ts.group_size:
            src = quant_prefix + (("overrides", ts.override) if ts.override is not None else ("weights",))
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
        if ov.match.name is not None and not any(re.fullmatch(ov.match.name, t.name) for t in tensors):
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
               f"{g.prompt_tokens + g.decode_steps} exceeds context_length {m.context_length}", "error")
    for i, target in enumerate(spec.device.preferred_targets):
        if target not in Targets.ALL:
            yield (("device", "preferred_targets", i), f"unknown target {target!r}"
                   f"{_did_you_mean(target, Targets.ALL)}", "error")
    if not spec.targets.enabled():
        yield (("targets",), "no target enabled; add at least one of " + ", ".join(Targets.ALL), "warning")

    for _, finding in capabilities.findings(spec):
        yield finding.path, finding.message, finding.severity


def _modality_checks(spec: ResolvedSpec, spec_dir: Path) -> Iterable[tuple[FieldPath, str, str]]:
    """Shapes the encoders' modules cannot be built with (omnic/model/encoders/)."""
    from omnic.importers import hf_encoders
    from omnic.importers.hf import UnsupportedModel

    v, a = spec.modalities.vision, spec.modalities.audio
    for name, encoder, check in (("vision", v, hf_encoders.check_vision), ("audio", a, hf_encoders.check_audio)):
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
            yield (at + ("n_heads",), f"n_heads {v.n_heads} does not divide d_model {v.d_model}", "error")
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
                yield (at + (key,), f"{key} has {len(values)} values for {v.channels} channels", "error")
        if v.image_std is not None and any(x <= 0 for x in v.image_std):
            yield (at + ("image_std",), "image_std values must be > 0", "error")
    if a is not None:
        at = ("modalities", "audio")
        if a.d_model % a.n_heads:
            yield (at + ("n_heads",), f"n_heads {a.n_heads} does not divide d_model {a.d_model}", "error")
        if a.d_model % 2 or a.d_model < 4:
            yield (at + ("d_model",), f"d_model {a.d_model} must be even and >= 4 (Whisper's "
                   "sinusoidal positions)", "error")
        if a.n_frames % 2:
            yield (at + ("n_frames",), f"n_frames {a.n_frames} must be even (the second convolution "
                   "has stride 2; Whisper takes 2 * max_source_positions frames)", "error")
        elif a.n_positions % a.downsample:
            yield (at + ("downsample",), f"downsample {a.downsample} does not divide the "
                   f"{a.n_positions} encoder frames (n_frames/2)", "error")


def _fit(spec: ResolvedSpec):
    from omnic.compiler.plan import MIB, plan_memory
    from omnic.presets import store

    plan = plan_memory(spec)
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
    msg = (f"needs {plan.total_bytes / MIB:.0f} MiB (weights {plan.weight_bytes / MIB:.0f}, KV cache "
           f"{plan.kv_cache_bytes / MIB:.0f}, activations {plan.activation_bytes / MIB:.0f}, runtime "
           f"{plan.runtime_overhead_bytes / MIB:.0f}) but device {spec.device.name} allows "
           f"{spec.device.memory_budget_mb} MiB; fits: {fits}")
    return plan, msg


# --- entry points -------------------------------------------------------------------------------
def validate_file(path: Path | str, display: str | None = None) -> Validation:
    """Validate one spec file and collect every diagnostic (never raises on bad input)."""
    path = Path(path)
    result = Validation(display or str(path))
    doc, diagnostics = load_with_extends(path, display)
    result.diagnostics += diagnostics
    if doc is None:
        return result
    if not isinstance(doc.data, dict):
        result.diagnostics.append(Diagnostic(doc.locate(()), (), "a spec must be a YAML mapping"))
        return result
    try:
        spec = Spec.model_validate(doc.data)
    except ValidationError as err:
        result.diagnostics += pydantic_diagnostics(err, doc, Spec)
        return result
    result.spec = spec  # earlier YAML-level errors (duplicates, extends) do not stop the checks
    resolved, problems = _resolve(spec, doc, path.parent)
    result.diagnostics += problems
    if resolved is None:
        return result
    result.resolved = resolved
    for fpath, message, severity in _semantic(resolved, path.parent):
        result.diagnostics.append(Diagnostic(doc.locate(fpath), fpath, message, severity))
    if not result.errors:
        plan, too_big = _fit(resolved)
        result.plan = plan
        if too_big:
            result.diagnostics.append(Diagnostic(doc.locate(("device",)), ("device",), too_big))
    return result


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
