"""The farm's matrix file: specs x device presets x quantization presets (torch-free).

```yaml
specs: [specs/mobile_2gb.yaml, other.yaml]   # relative to this file
devices: [mobile_2gb, mobile_4gb]            # presets/devices/*.yaml; absent: each spec's own
quantization: [int4_g32, int8]               # presets/quant/*.yaml or auto; absent: the spec's
targets: [onnx, gguf]                        # absent: every target each spec enables
overrides:                                   # spec fields deep-merged into the cells of one value
  devices: {mobile_4gb: {golden: {cases: 1}}}
```

A mistake in the matrix itself (YAML, unknown keys, an unknown preset, a missing spec file, an
override for a value that is not on its axis) is reported like a spec's, `FILE:LINE:COL field:
message`, all at once (`MatrixError`). What an override does to a spec is judged per cell: an
override that makes a cell's spec invalid fails that cell, located in this file.

`Matrix` is also the source of the matrix's JSON Schema, `schemas/omnic-farm.schema.json`
(`python -m omnic.tools.write_schemas`): it checks the shape; files, presets and the rules
above are the farm's own checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from omnic.constants import Targets
from omnic.presets import store
from omnic.spec.base import SpecModel
from omnic.spec.extends import KEY as EXTENDS
from omnic.spec.load import Diagnostic, Document, FieldPath, read_yaml
from omnic.spec.validate import pydantic_diagnostics

AUTO = "auto"  # `quantization: auto` (omnic.compiler.auto_quant), allowed on the quantization axis
# Override keys that belong to an axis: an override may not set what its cell's axis sets.
AXIS_FIELDS = {"devices": "device", "quantization": "quantization"}

TargetId = Literal[Targets.ALL]
SpecFields = dict[str, Any]


class MatrixModel(SpecModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Overrides(MatrixModel):
    specs: dict[str, SpecFields] = Field(
        default_factory=dict, description="Spec path, as written under `specs`, -> spec fields "
        "deep-merged into every cell of that spec.")
    devices: dict[str, SpecFields] = Field(
        default_factory=dict, description="Device preset -> spec fields deep-merged into every "
        "cell on that device.")
    quantization: dict[str, SpecFields] = Field(
        default_factory=dict, description="Quantization preset -> spec fields deep-merged into "
        "every cell with that quantization.")


class Matrix(MatrixModel):
    """A farm's matrix: every combination of its axes is one cell, compiled by `omnic farm`."""

    specs: tuple[str, ...] = Field(
        min_length=1, description="Spec files, relative to the matrix file.")
    devices: tuple[str, ...] | None = Field(
        None, min_length=1, description="Device presets (presets/devices/); absent: each spec's "
        "own device.")
    quantization: tuple[str, ...] | None = Field(
        None, min_length=1, description="Quantization presets (presets/quant/) or `auto`; "
        "absent: each spec's own quantization.")
    targets: tuple[TargetId, ...] | None = Field(
        None, min_length=1, description="Build only these targets (of those each spec enables); "
        "absent: every target each spec enables.")
    overrides: Overrides = Field(
        default_factory=Overrides, description="Spec fields per axis value, deep-merged into the "
        "cell spec: mappings key by key, anything else replaced; specs first, then devices, "
        "then quantization.")


@dataclass(frozen=True)
class LoadedMatrix:
    """A valid matrix with the YAML it came from (the location of every field)."""

    path: Path  # the matrix file as given
    doc: Document
    matrix: Matrix

    @property
    def folder(self) -> Path:
        return self.path.parent

    def spec_path(self, entry: str) -> Path:
        """A `specs` entry as a path (relative to the matrix file's folder)."""
        return self.folder / entry


class MatrixError(Exception):
    """The matrix file is invalid; `diagnostics` holds every error found (exit status 2)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def _duplicates(doc: Document, key: str, values: tuple[str, ...] | None) -> list[Diagnostic]:
    seen: set[str] = set()
    out = []
    for i, value in enumerate(values or ()):
        if value in seen:
            out.append(Diagnostic(doc.locate((key, i)), (key, i), f"{value!r} is listed twice"))
        seen.add(value)
    return out


def _presets(doc: Document, key: str, kind: str, values: tuple[str, ...] | None
             ) -> list[Diagnostic]:
    out = []
    for i, name in enumerate(values or ()):
        if kind == "quantization" and name == AUTO:
            continue
        try:
            store.path_of(kind, name)
        except store.UnknownPreset as unknown:
            out.append(Diagnostic(doc.locate((key, i)), (key, i), str(unknown)))
    return out


def _override_keys(doc: Document, m: Matrix) -> list[Diagnostic]:
    """Each override names a value of its axis and leaves the axis' own field to the axis."""
    out = []
    axes = {"specs": m.specs, "devices": m.devices, "quantization": m.quantization}
    for axis, table in (("specs", m.overrides.specs), ("devices", m.overrides.devices),
                        ("quantization", m.overrides.quantization)):
        for value, fields in table.items():
            at: FieldPath = ("overrides", axis, value)
            if axes[axis] is None:
                out.append(Diagnostic(doc.locate(at), at, f"the matrix has no `{axis}:` axis; "
                                      f"write the fields into the spec itself"))
            elif value not in axes[axis]:
                out.append(Diagnostic(doc.locate(at), at, f"{value!r} is not one of {axis}: "
                                      f"{', '.join(axes[axis])}"))
            for key in fields:
                if key == EXTENDS:
                    out.append(Diagnostic(doc.locate(at + (key,)), at + (key,),
                                          "an override cannot extend files; list the spec "
                                          "under `specs:` instead"))
                for other, field_name in AXIS_FIELDS.items():
                    if key == field_name and axes[other] is not None:
                        out.append(Diagnostic(doc.locate(at + (key,)), at + (key,),
                                              f"`{key}` is set by the matrix's `{other}:` axis"))
    return out


def check(doc: Document) -> tuple[Matrix | None, list[Diagnostic]]:
    """The matrix of a parsed document, or None, with every error found."""
    if not isinstance(doc.data, dict):
        return None, [Diagnostic(doc.locate(()), (), "a matrix must be a YAML mapping with "
                                 "`specs:` (and devices, quantization, targets, overrides)")]
    try:
        m = Matrix.model_validate(doc.data)
    except ValidationError as err:
        return None, pydantic_diagnostics(err, doc, Matrix)
    out = []
    folder = Path(doc.file).parent
    for i, entry in enumerate(m.specs):
        if not (folder / entry).is_file():
            out.append(Diagnostic(doc.locate(("specs", i)), ("specs", i),
                                  f"no such file: {folder / entry}"))
    for key in ("specs", "devices", "quantization", "targets"):
        out += _duplicates(doc, key, getattr(m, key))
    out += _presets(doc, "devices", "device", m.devices)
    out += _presets(doc, "quantization", "quantization", m.quantization)
    out += _override_keys(doc, m)
    return (None if out else m), out


def load_matrix(path: Path | str) -> LoadedMatrix:
    """Read and check a matrix file.

    Raises:
        MatrixError: every problem of the file, each with its location and field.
    """
    path = Path(path)
    doc, problems = read_yaml(path)
    if doc is None or problems:  # unreadable, a syntax error, duplicate keys
        raise MatrixError(problems)
    matrix, problems = check(doc)
    if matrix is None:
        raise MatrixError(problems)
    return LoadedMatrix(path, doc, matrix)
