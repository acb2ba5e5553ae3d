"""Schema-level checks of a spec file: every error at once, as `FILE:LINE:COL field: message`.

Stages, each adding diagnostics and never stopping at the first one:
1. YAML (syntax errors, duplicate keys) and `extends:` merging (missing files, cycles);
2. the pydantic models (types, unknown keys with did-you-mean, sizes, closed vocabularies).

What needs presets, the quantization plan, checkpoints, the memory plan or the targets' rules
(the semantic checks) is `omnic.compiler.validate`, which starts from `read_spec` here.

Torch-free, like everything `omnic validate` and `omnic plan` import.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from omnic.spec.extends import load_with_extends
from omnic.spec.load import Diagnostic, Document, FieldPath
from omnic.spec.spec import Spec


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


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """The "; did you mean 'x'?" suffix for the closest of `options` (empty when none is)."""
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
        return path, f"unknown key {path[-1]!r}{did_you_mean(path[-1], options)}"
    if kind == "literal_error":
        expected = [s.strip().strip("'") for s in re.split(r",| or ", ctx.get("expected", ""))
                    if s.strip()]
        return path, (f"must be one of {', '.join(expected)}, got {_short(value)}"
                      f"{did_you_mean(value, expected)}")
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",")]
        key = ctx.get("discriminator", "").strip("'")
        return path + (key,), (f"{key} {ctx.get('tag')!r} is not one of {', '.join(tags)}"
                               f"{did_you_mean(ctx.get('tag'), tags)}")
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
        where = _pinpoint(path, text, walk)
        if where != path and text.startswith(f"{where[-1]}: "):  # "rope: ..." at model.rope
            text = text[len(where[-1]) + 2:]
        return where, text
    head = kind.split("_")[0]
    if (head in _TYPE_MESSAGES and _TYPE_MESSAGES[head]
            and kind.endswith(("_type", "_parsing", "_from_float"))):
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


# --- entry point --------------------------------------------------------------------------------
def read_spec(path: Path | str, display: str | None = None
              ) -> tuple[Document | None, Spec | None, list[Diagnostic]]:
    """Stages 1 and 2 for one spec file (never raises on bad input).

    Returns:
        (the merged document or None when it cannot be read, the spec as written or None when it
        does not match the models, every diagnostic found so far). YAML-level errors
        (duplicates, extends) do not stop the pydantic checks.
    """
    doc, diagnostics = load_with_extends(Path(path), display)
    if doc is None:
        return None, None, diagnostics
    if not isinstance(doc.data, dict):
        mapping = Diagnostic(doc.locate(()), (), "a spec must be a YAML mapping")
        return doc, None, diagnostics + [mapping]
    try:
        spec = Spec.model_validate(doc.data)
    except ValidationError as err:
        return doc, None, diagnostics + pydantic_diagnostics(err, doc, Spec)
    return doc, spec, diagnostics
