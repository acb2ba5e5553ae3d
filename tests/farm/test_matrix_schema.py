"""schemas/omnic-farm.schema.json: the matrix file's JSON Schema, generated from the farm's own
pydantic model (omnic/farm/matrix.py), agrees with what `omnic farm` accepts.

The schema checks a matrix's shape; the farm checks more (spec files exist, presets exist, no
value twice, overrides name a value of their axis), so a matrix the schema accepts may still be
refused, located, by the farm. No Ray here: these tests import neither Ray nor torch.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_farm import MATRIX

from omnic.cli.main import main
from omnic.farm import matrix as farm_matrix
from omnic.spec.load import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "omnic-farm.schema.json"
DOCSTRING_MATRIX = farm_matrix.__doc__.split("```yaml\n")[1].split("```")[0]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _farm_check(text: str, folder: Path) -> list[str]:
    """The farm's messages for a matrix file written in `folder` ([] when it accepts it)."""
    doc, problems = parse_yaml(text, str(folder / "matrix.yaml"))
    assert doc is not None and problems == []
    matrix, problems = farm_matrix.check(doc)
    assert (matrix is None) == bool(problems)
    return [str(p) for p in problems]


def test_committed_schema_is_fresh_and_printed_by_omnic_schema():
    from omnic.tools.write_schemas import available, render

    assert "omnic-farm" in available()
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render("omnic-farm"), \
        "stale: run python -m omnic.tools.write_schemas"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema", "omnic-farm"]) == 0
    assert out.getvalue() == SCHEMA_PATH.read_text(encoding="utf-8")


@pytest.mark.parametrize("text", [MATRIX, DOCSTRING_MATRIX], ids=["test_farm", "docstring"])
def test_example_matrices_satisfy_the_schema(text, validator):
    validator.validate(yaml.safe_load(text))


def test_docstring_matrix_is_accepted_by_the_farm_too(tmp_path):
    (tmp_path / "specs").mkdir()
    for name in ("specs/mobile_2gb.yaml", "other.yaml"):
        (tmp_path / name).write_text("omnic: 1\n", encoding="utf-8")  # only their presence counts
    assert _farm_check(DOCSTRING_MATRIX, tmp_path) == []


# (matrix, a piece of the farm's message): mistakes of shape, refused by both
BAD_SHAPES = {
    "not_a_mapping": ("- a.yaml\n", "must be a YAML mapping"),
    "no_specs": ("devices: [mobile_2gb]\n", "specs"),
    "empty_specs": ("specs: []\n", "specs"),
    "unknown_key": ("specs: [a.yaml]\nplatforms: [linux]\n", "platforms"),
    "unknown_target": ("specs: [a.yaml]\ntargets: [wasm]\n", "targets[0]: must be one of"),
    "scalar_axis": ("specs: [a.yaml]\ndevices: mobile_2gb\n", "devices"),
    "empty_axis": ("specs: [a.yaml]\nquantization: []\n", "quantization"),
    "unknown_override_axis": ("specs: [a.yaml]\noverrides: {platforms: {}}\n", "platforms"),
    "override_not_a_mapping": ("specs: [a.yaml]\ndevices: [mobile_2gb]\n"
                               "overrides: {devices: {mobile_2gb: 3}}\n", "mobile_2gb"),
}


@pytest.mark.parametrize("case", BAD_SHAPES, ids=list(BAD_SHAPES))
def test_bad_shapes_are_refused_by_the_farm_and_the_schema(case, validator, tmp_path):
    text, expected = BAD_SHAPES[case]
    (tmp_path / "a.yaml").write_text("omnic: 1\n", encoding="utf-8")
    messages = _farm_check(text, tmp_path)
    assert messages and any(expected in m for m in messages), messages
    assert str(tmp_path / "matrix.yaml") + ":" in messages[0]  # located in the matrix file
    assert not validator.is_valid(yaml.safe_load(text))


# what only the farm can judge: files, presets, repeats, overrides of values off their axis
BEYOND_THE_SCHEMA = {
    "missing_spec_file": ("specs: [nope.yaml]\n", "no such file"),
    "unknown_preset": ("specs: [a.yaml]\ndevices: [no_such_device]\n", "no_such_device"),
    "listed_twice": ("specs: [a.yaml, a.yaml]\n", "listed twice"),
    "override_off_axis": ("specs: [a.yaml]\ndevices: [mobile_2gb]\n"
                          "overrides: {devices: {mobile_4gb: {golden: {cases: 1}}}}\n",
                          "is not one of devices"),
}


@pytest.mark.parametrize("case", BEYOND_THE_SCHEMA, ids=list(BEYOND_THE_SCHEMA))
def test_the_farm_checks_what_the_schema_cannot(case, validator, tmp_path):
    text, expected = BEYOND_THE_SCHEMA[case]
    (tmp_path / "a.yaml").write_text("omnic: 1\n", encoding="utf-8")
    assert validator.is_valid(yaml.safe_load(text))
    messages = _farm_check(text, tmp_path)
    assert any(expected in m for m in messages), messages


def test_override_file_paths_are_read_from_the_matrix_folder_but_keywords_stay(tmp_path):
    # an override's calibration text is a file relative to the matrix, like its weights path;
    # the keyword `builtin` (omnic's own corpus) is not a path
    from omnic.farm.cells import _absolute_paths
    from omnic.spec.load import Document

    for text, want in (("corpus.txt", str((tmp_path / "corpus.txt").resolve())),
                       ("builtin", "builtin")):
        doc = Document(str(tmp_path / "matrix.yaml"),
                       {"quantization": {"calibration": {"text": text}},
                        "weights": {"path": "w.safetensors"}}, {})
        _absolute_paths(doc, tmp_path)
        assert doc.data["quantization"]["calibration"]["text"] == want
        assert doc.data["weights"]["path"] == str((tmp_path / "w.safetensors").resolve())
