"""`extends:` — spec files merged underneath a spec, with every key keeping its own location.

Rules (also in the `extends` field's description, hence in the JSON Schema):
- paths are relative to the file that names them;
- files are merged in the order listed, then the extending file on top: the later one wins;
- mappings merge key by key; any other value (scalars, and lists too) is replaced whole;
- a file may itself extend others; a cycle is an error;
- file paths inside an extended file (`FILE_FIELDS`: weights, tokenizer, encoder weights,
  calibration text) stay relative to the file that wrote them: they are rewritten relative to
  the extending file; a keyword in place of a file (`NOT_FILES`: calibration `builtin`) is kept;
- a relative path in `PATH_FIELDS` may not leave the folder of the file that writes it (`..`):
  a file outside is named by an absolute path, so that a spec never reaches out by accident;
- the merged document has no `extends` key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from omnic.spec.load import Diagnostic, Document, FieldPath, Location, read_yaml

KEY = "extends"
# Spec fields holding a path relative to the file that holds them.
PATH_FIELDS = (("weights", "path"), ("tokenizer", "path"),
               ("modalities", "vision", "weights"), ("modalities", "audio", "weights"))
# Every spec field naming a file: PATH_FIELDS and the calibration text, which may instead be a
# keyword (NOT_FILES). All are rebased through `extends:` and made absolute in the farm's
# overrides; the calibration text is kept out of PATH_FIELDS, whose `..` refusal takes no
# keywords (so a calibration text may still name a file outside the spec's folder).
FILE_FIELDS = (*PATH_FIELDS, ("quantization", "calibration", "text"))
NOT_FILES = ("builtin",)  # quantization.calibration.text: omnic's own corpus, not a file


def _paths(data: Any, fields: tuple[FieldPath, ...] = PATH_FIELDS
           ) -> Iterator[tuple[FieldPath, dict, str]]:
    """Each `fields` value of `data` that is a string: (field path, its mapping, value)."""
    for fpath in fields:
        node = data
        for key in fpath[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(fpath[-1]), str):
            yield fpath, node, node[fpath[-1]]


def _rebase(doc: Document, from_dir: Path, to_dir: Path) -> None:
    """Rewrite FILE_FIELDS of `doc` (relative to from_dir) to be relative to to_dir, in place;
    keywords (NOT_FILES) are not paths and stay as written."""
    if from_dir.resolve() == to_dir.resolve():
        return
    for fpath, holder, value in _paths(doc.data, FILE_FIELDS):
        if value not in NOT_FILES and not os.path.isabs(value):
            holder[fpath[-1]] = os.path.relpath(from_dir / value, to_dir).replace(os.sep, "/")


def _escaping_paths(doc: Document) -> list[Diagnostic]:
    """PATH_FIELDS of `doc` whose relative path leads out of the folder of its file (`..`)."""
    out = []
    for fpath, _, node in _paths(doc.data):
        if os.path.isabs(node):
            continue
        parts = Path(os.path.normpath(node)).parts  # lexical: symlinks inside may lead anywhere
        if parts[:1] == (os.pardir,):
            out.append(Diagnostic(doc.locate(fpath), fpath, (
                f"{node!r} leads out of the spec's folder (..); a file outside it must be "
                "named by its absolute path")))
    return out


def _subtree(locations: dict[FieldPath, Location], path: FieldPath) -> dict[FieldPath, Location]:
    n = len(path)
    return {p: loc for p, loc in locations.items() if p[:n] == path}


def merge(base: Document, top: Document) -> Document:
    """`top` merged over `base` (mappings key by key, anything else replaced whole)."""
    locations: dict[FieldPath, Location] = {}

    def walk(a: Any, b: Any, path: FieldPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            if path in top.locations:
                locations[path] = top.locations[path]
            elif path in base.locations:
                locations[path] = base.locations[path]
            out = {}
            for key, value in a.items():
                if key not in b:
                    out[key] = value
                    locations.update(_subtree(base.locations, path + (key,)))
            for key, value in b.items():
                if key in a:
                    out[key] = walk(a[key], value, path + (key,))
                else:
                    out[key] = value
                    locations.update(_subtree(top.locations, path + (key,)))
            return out
        locations.update(_subtree(top.locations, path))
        return b

    data = walk(base.data, top.data, ())
    return Document(top.file, data, locations)


def _display(path: Path) -> str:
    return os.path.normpath(str(path))


def _short(path: Path) -> str:
    """A resolved path, relative to the working directory when below it."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def load_with_extends(
    path: Path | str, display: str | None = None, _stack: tuple[Path, ...] = ()
) -> tuple[Document | None, list[Diagnostic]]:
    """Read a spec file and merge the files it extends underneath it.

    Args:
        path: the spec file.
        display: how the file is named in messages (default: `path` as given).

    Returns:
        (merged document or None when unreadable, diagnostics). Diagnostics point into the file
        where the problem is: a syntax error in an extended file names that file.
    """
    path = Path(path)
    doc, diagnostics = read_yaml(path, display)
    if doc is None:
        return None, diagnostics
    diagnostics += _escaping_paths(doc)
    if not isinstance(doc.data, dict) or KEY not in doc.data:
        return doc, diagnostics
    entries = doc.data[KEY]
    data = {k: v for k, v in doc.data.items() if k != KEY}
    top = Document(doc.file, data, {p: loc for p, loc in doc.locations.items() if p[:1] != (KEY,)})
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        diagnostics.append(Diagnostic(doc.locate((KEY,)), (KEY,), "expected a list of file paths"))
        return top, diagnostics
    here = path.resolve()
    stack = _stack + (here,)
    base: Document | None = None
    for i, entry in enumerate(entries):
        target = path.parent / entry
        where = doc.locate((KEY, i))
        if target.resolve() in stack:
            chain = [_short(p) for p in stack[stack.index(target.resolve()):]]
            chain.append(_short(target.resolve()))
            diagnostics.append(Diagnostic(where, (KEY, i), "extends cycle: " + " -> ".join(chain)))
            continue
        if not target.is_file():
            diagnostics.append(Diagnostic(where, (KEY, i), f"no such file: {_display(target)}"))
            continue
        sub, sub_diagnostics = load_with_extends(target, _display(target), stack)
        diagnostics += sub_diagnostics
        if sub is None:
            continue
        if not isinstance(sub.data, dict):
            diagnostics.append(Diagnostic(where, (KEY, i), f"{entry} does not hold a mapping"))
            continue
        _rebase(sub, target.parent, path.parent)
        base = sub if base is None else merge(base, sub)
    if base is None:
        return top, diagnostics
    return merge(base, top), diagnostics


def merge_data(spec_data: dict, extends: list[str],
               spec_dir: Path) -> tuple[dict, list[Diagnostic]]:
    """Merge extended files under plain spec data (for a Spec built in code, not read from a
    file)."""
    top = Document("<spec>", {k: v for k, v in spec_data.items() if k != KEY}, {})
    base: Document | None = None
    diagnostics: list[Diagnostic] = []
    for i, entry in enumerate(extends):
        sub, sub_diagnostics = load_with_extends(spec_dir / entry, _display(spec_dir / entry))
        diagnostics += sub_diagnostics
        if sub is not None and isinstance(sub.data, dict):
            _rebase(sub, (spec_dir / entry).parent, spec_dir)
            base = sub if base is None else merge(base, sub)
        elif sub is not None:
            diagnostics.append(Diagnostic(None, (KEY, i), f"{entry} does not hold a mapping"))
    merged = top if base is None else merge(base, top)
    return merged.data, diagnostics
