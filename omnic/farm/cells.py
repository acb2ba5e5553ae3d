"""The cells of a matrix: one spec on one device with one quantization, checked torch-free.

A cell's spec is the base spec with the matrix's overrides deep-merged on top (specs, then
devices, then quantization) and its axis values set last. It is kept twice:
- in memory, as a `Document` whose every key keeps its own location (base spec keys in the spec
  file, override keys and axis values in the matrix file), checked as `omnic validate` checks a
  file, so an override that breaks a cell is reported at its line in the matrix;
- on disk, as OUT/cells/<cell id>/spec.yaml: `extends:` the base spec, plus the same overrides
  and axis values, which is what the cell's compile reads (the same data: `extends:` merges the
  same way).

File paths an override writes (`omnic.spec.extends.FILE_FIELDS`) are relative to the matrix
file; both forms carry them absolute.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from omnic.compiler.compile_cost import compile_peak_bytes
from omnic.compiler.validate import Validation, check_fit, check_resolved, inline_presets
from omnic.farm.matrix import LoadedMatrix
from omnic.spec.extends import KEY as EXTENDS
from omnic.spec.extends import FILE_FIELDS, NOT_FILES, load_with_extends, merge
from omnic.spec.load import Diagnostic, Document, FieldPath
from omnic.spec.spec import Spec
from omnic.spec.validate import pydantic_diagnostics

CELLS_DIR = "cells"
SPEC_FILE = "spec.yaml"


@dataclass(frozen=True)
class Cell:
    """One combination of the matrix's axes."""

    id: str  # its folder name under OUT/cells/
    spec: str  # the `specs` entry, as written in the matrix
    spec_path: Path  # that file
    device: str | None  # None: the spec's own
    quantization: str | None  # None: the spec's own
    document: Document  # base spec + overrides + axis values, every key located
    written: dict[str, Any]  # the cell spec file's data: extends + overrides + axis values


@dataclass
class CheckedCell:
    """A cell checked as `omnic plan` checks a spec: its resolved spec, plan and needs."""

    cell: Cell
    validation: Validation
    targets: list[str] = field(default_factory=list)  # what its compile builds
    peak_bytes: int | None = None  # memory its compile needs (omnic.compiler.compile_cost)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # why it cannot be compiled (the exit-2 text of a compile)

    @property
    def runnable(self) -> bool:
        return self.problem is None


def _display(path: Path) -> str:
    return os.path.normpath(str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _spec_ids(specs: tuple[str, ...]) -> list[str]:
    """A short, unique folder-name part per spec: its file stem, numbered when two share one."""
    stems = [_slug(Path(s).stem) for s in specs]
    return [s if stems.count(s) == 1 else f"{s}-{stems[:i + 1].count(s)}"
            for i, s in enumerate(stems)]


def _sub_document(doc: Document, prefix: FieldPath) -> Document:
    """The value at `prefix` as its own document, its keys keeping their locations."""
    data: Any = doc.data
    for key in prefix:
        data = data[key]
    n = len(prefix)
    locations = {p[n:]: loc for p, loc in doc.locations.items() if p[:n] == prefix and len(p) > n}
    return Document(doc.file, copy.deepcopy(data), locations)


def _absolute_paths(doc: Document, folder: Path) -> None:
    """FILE_FIELDS of an override, written relative to the matrix file, made absolute (a
    keyword in place of a file, NOT_FILES, stays as written)."""
    for fpath in FILE_FIELDS:
        node = doc.data
        for key in fpath[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(fpath[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and value not in NOT_FILES and not os.path.isabs(value):
            node[fpath[-1]] = str((folder / value).resolve())


def _layers(loaded: LoadedMatrix, spec: str, device: str | None,
            quantization: str | None) -> Document:
    """The overrides of one cell, then its axis values, merged into one located document."""
    m, doc = loaded.matrix, loaded.doc
    top = Document(doc.file, {}, {})
    for axis, value, table in (("specs", spec, m.overrides.specs),
                               ("devices", device, m.overrides.devices),
                               ("quantization", quantization, m.overrides.quantization)):
        if value in table:
            layer = _sub_document(doc, ("overrides", axis, value))
            _absolute_paths(layer, loaded.folder.resolve())
            top = merge(top, layer)
    axis_values: dict[str, Any] = {}
    locations = {}
    for key, value, values in (("device", device, m.devices),
                               ("quantization", quantization, m.quantization)):
        if value is not None:
            axis_values[key] = value
            axis = "devices" if key == "device" else key
            locations[(key,)] = doc.locate((axis, values.index(value)))
    return merge(top, Document(doc.file, axis_values, locations))


def expand(loaded: LoadedMatrix) -> tuple[list[Cell], dict[str, list[Diagnostic]]]:
    """Every cell of the matrix, in order (specs, then devices, then quantization).

    Returns:
        (cells, per spec entry the problems of reading it: YAML, extends). A spec that cannot be
        read still gives its cells (with no document); checking them reports why.
    """
    m = loaded.matrix
    cells = []
    problems: dict[str, list[Diagnostic]] = {}
    for spec, spec_id in zip(m.specs, _spec_ids(m.specs)):
        path = loaded.spec_path(spec)
        base, problems[spec] = load_with_extends(path, _display(path))
        for device in m.devices or (None,):
            for quant in m.quantization or (None,):
                layers = _layers(loaded, spec, device, quant)
                # unreadable: no document (its problems say why); a missing field: located at
                # the spec's top
                if base is None or not isinstance(base.data, dict):
                    merged = base or Document(_display(path), None, {})
                else:
                    merged = merge(base, layers)
                written = {EXTENDS: [str(path.resolve())], **copy.deepcopy(layers.data)}
                parts = [spec_id] + [_slug(v) for v in (device, quant) if v is not None]
                cells.append(Cell("--".join(parts), spec, path, device, quant, merged, written))
    return cells, problems


def check_cell(cell: Cell, matrix_targets: tuple[str, ...] | None,
               read_problems: list[Diagnostic]) -> CheckedCell:
    """Validate, resolve and plan a cell as `omnic validate` / `omnic plan` do, torch-free.

    The steps are those of `omnic.compiler.validate.validate_file` after `read_spec`, run on the
    cell's in-memory document so that every message points at the file and line it comes from.
    """
    doc = cell.document
    result = Validation(_display(cell.spec_path), doc=doc, diagnostics=list(read_problems))
    if not isinstance(doc.data, dict):
        if not result.errors:
            result.diagnostics.append(Diagnostic(doc.locate(()), (), "a spec must be a YAML "
                                                 "mapping"))
    else:
        try:
            result.spec = Spec.model_validate(doc.data)
        except ValidationError as err:
            result.diagnostics += pydantic_diagnostics(err, doc, Spec)
        check_resolved(inline_presets(result), cell.spec_path.parent)
        if result.ok:
            check_fit(result)
    checked = CheckedCell(cell, result)
    if not result.ok or result.resolved is None:
        checked.problem = "\n".join(str(d) for d in result.errors)
        return checked
    enabled = result.resolved.targets.enabled()
    if matrix_targets is None:
        checked.targets = enabled
    else:
        checked.targets = [t for t in matrix_targets if t in enabled]
        skipped = [t for t in matrix_targets if t not in enabled]
        if skipped:
            checked.notes.append(f"not built: {', '.join(skipped)} (not in the spec's targets)")
        if not checked.targets:
            checked.problem = (f"none of the matrix's targets ({', '.join(matrix_targets)}) is "
                               f"enabled in {cell.spec} (it enables: {', '.join(enabled)})")
            return checked
    # a warning about a target this cell does not build is not this cell's
    checked.notes += [str(d) for d in result.warnings
                      if not (len(d.path) > 1 and d.path[0] == "targets"
                              and d.path[1] not in checked.targets)]
    checked.peak_bytes = compile_peak_bytes(result.plan, checked.targets)
    return checked


def cell_dir(out_dir: Path, cell: Cell) -> Path:
    """OUT/cells/<cell id>/: stable across runs, so a rerun finds its builds (and the cache)."""
    return out_dir / CELLS_DIR / cell.id


def write_cell_spec(out_dir: Path, cell: Cell, matrix_file: Path) -> Path:
    """OUT/cells/<cell id>/spec.yaml, the spec the cell's compile reads."""
    folder = cell_dir(out_dir, cell)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC_FILE
    axes = ", ".join(f"{k} {v}" for k, v in (("device", cell.device),
                                              ("quantization", cell.quantization)) if v)
    header = (f"# Generated by `omnic farm {_display(matrix_file)}`: {cell.spec}"
              f"{' on ' + axes if axes else ''}.\n# Rewritten on every run; edit the matrix "
              "instead.\n")
    text = header + yaml.safe_dump(cell.written, sort_keys=False, allow_unicode=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
