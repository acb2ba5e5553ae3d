"""YAML locations and `extends:` merging."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from omnic.presets import resolve
from omnic.spec import Spec
from omnic.spec.extends import load_with_extends
from omnic.spec.load import Location, SpecError, parse_yaml

SPEC_BODY = """\
omnic: 1
name: base
device: mobile_2gb
model: {vocab_size: 512, d_model: 64, n_layers: 2, n_heads: 4, ffn: {kind: swiglu, hidden: 128}, \
context_length: 64}
targets: {onnx: {}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_locations_of_keys_items_and_flow_mappings():
    text = "a: 1\nb:\n  c: {d: 2, e: [x, y]}\n  list:\n    - k: 1\n    - k: 2\n"
    doc, problems = parse_yaml(text, "f.yaml")
    assert problems == []
    assert doc.data == {"a": 1, "b": {"c": {"d": 2, "e": ["x", "y"]}, "list": [{"k": 1}, {"k": 2}]}}
    assert doc.locations[("a",)] == Location("f.yaml", 1, 1)
    assert doc.locations[("b", "c")] == Location("f.yaml", 3, 3)
    assert doc.locations[("b", "c", "d")] == Location("f.yaml", 3, 7)
    assert doc.locations[("b", "c", "e", 1)] == Location("f.yaml", 3, 20)
    assert doc.locations[("b", "list", 1)] == Location("f.yaml", 6, 7)
    assert doc.locations[("b", "list", 1, "k")] == Location("f.yaml", 6, 7)
    # a missing field is reported at its nearest present ancestor
    assert doc.locate(("b", "c", "missing")) == Location("f.yaml", 3, 3)


def test_merge_keys_keep_the_anchor_location():
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    doc, problems = parse_yaml(text, "m.yaml")
    assert problems == []  # an explicit key over a merged one is not a duplicate
    assert doc.data["derived"] == {"x": 1, "y": 3}
    assert doc.locations[("derived", "x")] == Location("m.yaml", 1, 11)
    assert doc.locations[("derived", "y")] == Location("m.yaml", 4, 3)


def test_syntax_error_is_a_located_diagnostic_not_an_exception():
    doc, problems = parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml")
    assert doc is None
    assert len(problems) == 1
    assert problems[0].location.file == "bad.yaml" and problems[0].location.line == 3
    assert "YAML syntax error" in problems[0].message


def test_duplicate_keys_are_reported():
    _, problems = parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "d.yaml")
    assert [(p.field, p.location.line) for p in problems] == [("b.c", 4)]


def test_extends_merges_mappings_replaces_lists_and_this_file_wins(tmp_path):
    write(tmp_path / "parts" / "first.yaml", """\
        golden: {cases: 3, prompt_tokens: 8}
        device: {name: d1, memory_budget_mb: 100, bandwidth_gbps: 1.0, os: linux, features: [a, b]}
        """)
    write(tmp_path / "parts" / "second.yaml", """\
        extends: [first.yaml]
        golden: {prompt_tokens: 9, decode_steps: 5}
        device: {features: [c]}
        """)
    top = write(tmp_path / "spec.yaml", """\
        extends: [parts/second.yaml]
        golden: {decode_steps: 6}
        device: {memory_budget_mb: 200}
        """)
    doc, problems = load_with_extends(top)
    assert problems == []
    assert "extends" not in doc.data
    # mappings merge key by key; the later file wins; this file wins over all
    assert doc.data["golden"] == {"cases": 3, "prompt_tokens": 9, "decode_steps": 6}
    # lists are replaced whole, never concatenated
    assert doc.data["device"]["features"] == ["c"]
    assert doc.data["device"]["memory_budget_mb"] == 200 and doc.data["device"]["name"] == "d1"
    # every key keeps the location of the file it came from
    first, second = tmp_path / "parts" / "first.yaml", tmp_path / "parts" / "second.yaml"
    assert doc.locations[("golden", "cases")] == Location(str(first), 1, 10)
    assert doc.locations[("golden", "prompt_tokens")] == Location(str(second), 2, 10)
    assert doc.locations[("golden", "decode_steps")] == Location(str(top), 2, 10)
    assert doc.locations[("device", "features", 0)].file == str(second)
    assert not any(p[:3] == ("device", "features", 1) for p in doc.locations)  # b is gone


def test_later_extends_entry_wins_over_earlier(tmp_path):
    write(tmp_path / "a.yaml", "golden: {cases: 1, seed: 1}\n")
    write(tmp_path / "b.yaml", "golden: {cases: 2}\n")
    top = write(tmp_path / "top.yaml", "extends: [a.yaml, b.yaml]\nname: x\n")
    doc, problems = load_with_extends(top)
    assert problems == [] and doc.data == {"golden": {"cases": 2, "seed": 1}, "name": "x"}


def test_extends_cycle_and_self_reference_are_errors(tmp_path):
    me = write(tmp_path / "me.yaml", "extends: [me.yaml]\nname: x\n")
    _, problems = load_with_extends(me)
    assert len(problems) == 1 and "extends cycle" in problems[0].message
    assert (problems[0].location.line, problems[0].location.col) == (1, 11)


def test_extended_spec_validates_and_resolves(tmp_path):
    write(tmp_path / "base.yaml", SPEC_BODY)
    top = write(tmp_path / "spec.yaml", "extends: [base.yaml]\nname: child\nquantization: int8\n")
    from omnic.compiler.validate import load_resolved

    resolved = load_resolved(top)
    assert resolved.name == "child" and resolved.quantization.weights.scheme == "int8"
    assert resolved.model.d_model == 64 and resolved.extends == ()


def test_resolve_merges_extends_of_a_spec_built_in_code(tmp_path):
    import yaml

    write(tmp_path / "base.yaml", SPEC_BODY)
    spec = Spec.model_validate({"omnic": 1, "name": "coded", "extends": ["base.yaml"],
                                **{k: v for k, v in yaml.safe_load(SPEC_BODY).items()
                                   if k != "name"}})
    resolved = resolve(spec, tmp_path)
    assert resolved.name == "coded" and resolved.extends == ()
    with pytest.raises(SpecError):
        resolve(spec.model_copy(update={"extends": ("nope.yaml",)}), tmp_path)


def test_paths_in_extended_files_stay_relative_to_their_file(tmp_path):
    write(tmp_path / "shared" / "weights" / "m.safetensors", "")
    write(tmp_path / "shared" / "base.yaml",
          "weights: {source: safetensors, path: weights/m.safetensors}\n")
    top = write(tmp_path / "specs" / "spec.yaml", "extends: [../shared/base.yaml]\nname: x\n")
    doc, problems = load_with_extends(top)
    assert problems == []
    assert doc.data["weights"]["path"] == "../shared/weights/m.safetensors"
    assert (top.parent / doc.data["weights"]["path"]).is_file()


CALIBRATED = "quantization: {weights: {scheme: int4, group_size: 32, method: gptq}, " \
    "calibration: {text: %s}}\n"


def test_calibration_text_in_an_extended_file_stays_relative_to_its_file(tmp_path):
    write(tmp_path / "shared" / "corpus.txt", "one passage\n\n---\n\nanother passage\n")
    write(tmp_path / "shared" / "base.yaml", SPEC_BODY + CALIBRATED % "corpus.txt")
    top = write(tmp_path / "specs" / "spec.yaml", "extends: [../shared/base.yaml]\nname: x\n")
    doc, problems = load_with_extends(top)
    assert problems == []
    text = doc.data["quantization"]["calibration"]["text"]
    assert text == "../shared/corpus.txt"
    assert (top.parent / text).resolve() == (tmp_path / "shared" / "corpus.txt").resolve()
    from omnic.compiler.validate import validate_file

    result = validate_file(top)
    assert result.ok, [d.message for d in result.diagnostics]
    assert result.resolved.quantization.calibration.text == "../shared/corpus.txt"


def test_builtin_calibration_text_is_a_keyword_not_a_path(tmp_path):
    write(tmp_path / "shared" / "base.yaml", SPEC_BODY + CALIBRATED % "builtin")
    top = write(tmp_path / "specs" / "spec.yaml", "extends: [../shared/base.yaml]\nname: x\n")
    doc, problems = load_with_extends(top)
    assert problems == [] and doc.data["quantization"]["calibration"]["text"] == "builtin"
    from omnic.compiler.validate import validate_file

    assert validate_file(top).ok


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_within_the_limit_stay_cheap():
    doc, problems = parse_yaml(_laughs(4), "laughs.yaml")  # 12,349 nodes once expanded
    assert problems == [] and len(doc.locations) < 200


def test_exponential_aliases_are_refused_before_they_expand():
    # 10**9 nodes once expanded; refused where the expansion first passes the limit (a4)
    doc, problems = parse_yaml(_laughs(9), "laughs.yaml")
    assert doc is None and [str(p.location) for p in problems] == ["laughs.yaml:5:5"]
    assert "billion laughs" in problems[0].message
