"""`omnic validate | resolve | plan | schema | presets` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from omnic.cli.main import main
from omnic.spec import ResolvedSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
HEAVY = ("torch", "onnx", "onnxruntime", "coremltools", "executorch", "tvm", "gguf",
         "transformers", "safetensors", "tokenizers")


def test_example_specs_validate(capsys):
    assert len(EXAMPLES) >= 2
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert all(f"{p}: valid" in out for p in EXAMPLES)


def test_example_specs_start_with_the_schema_line_and_a_compile_command():
    for path in EXAMPLES:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "# yaml-language-server: $schema=../schemas/omnic-spec.schema.json"
        assert any(line.startswith(f"#   omnic compile specs/{path.name}") for line in lines[:12])


def test_validate_without_torch_or_backends():
    """`omnic validate` and `omnic plan` must import none of the heavy libraries."""
    code = (
        "import sys; from omnic.cli.main import main\n"
        f"assert main(['validate', {str(EXAMPLES[0])!r}]) == 0\n"
        f"assert main(['plan', {str(ROOT / 'specs' / 'mobile_2gb.yaml')!r}, '--json']) == 0\n"
        f"assert main(['resolve', {str(ROOT / 'specs' / 'mobile_4gb.yaml')!r}]) == 0\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, heavy\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]


def test_missing_file_is_exit_2_without_traceback(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_valid_and_invalid_together_exit_2(capsys):
    bad = ROOT / "tests" / "spec" / "malformed" / "unknown_key.yaml"
    assert main(["validate", str(EXAMPLES[0]), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{EXAMPLES[0]}: valid" in captured.out and "1 error" in captured.out


def test_resolve_prints_an_explicit_spec_that_resolves_to_itself(capsys, tmp_path):
    assert main(["resolve", str(ROOT / "specs" / "mobile_4gb.yaml")]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    resolved = ResolvedSpec.model_validate(data)
    assert resolved.model.n_kv_heads == 2 and resolved.model.head_dim == 64
    assert resolved.device.memory_budget_mb == 2000
    # nothing implicit: every field of every section is written out
    assert set(data["model"]) == set(type(resolved.model).model_fields)
    assert set(data["device"]) == set(type(resolved.device).model_fields)
    assert set(data) == set(ResolvedSpec.model_fields)
    again = tmp_path / "resolved.yaml"
    again.write_text(text)
    assert main(["resolve", str(again), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == resolved.model_dump(mode="json")


def test_plan_json_and_table(capsys):
    spec = str(ROOT / "specs" / "mobile_2gb.yaml")
    assert main(["plan", spec, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"] == "mobile_2gb" and plan["fits"] is True
    assert plan["parameters"] == 11_015_040
    assert plan["kv_cache_bytes"] == 2 * 6 * 2 * 64 * 512 * 4
    assert main(["plan", spec]) == 0
    out = capsys.readouterr().out
    assert "int4_g32" in out and "headroom" in out and "tok/s" in out


def test_plan_of_a_spec_that_does_not_fit_prints_the_plan_and_exits_2(capsys):
    spec = ROOT / "tests" / "spec" / "malformed" / "does_not_fit.yaml"
    assert main(["plan", str(spec), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["fits"] is False
    assert "fits: mobile_4gb" in captured.err


def test_schema_command_prints_the_committed_schema(capsys):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == (ROOT / "schemas" / "omnic-spec.schema.json").read_text(encoding="utf-8")
    assert main(["schema", "nope"]) == 2


def test_committed_schemas_are_fresh():
    from omnic.tools.write_schemas import available, render

    for name in available():
        path = ROOT / "schemas" / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: run python -m omnic.tools.write_schemas"
        assert path.read_text(encoding="utf-8") == render(name), \
            f"{path} is stale: run python -m omnic.tools.write_schemas"


@pytest.fixture(scope="module")
def spec_schema():
    schema = json.loads((ROOT / "schemas" / "omnic-spec.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_satisfy_the_json_schema(path, spec_schema):
    jsonschema.Draft202012Validator(spec_schema).validate(yaml.safe_load(path.read_text()))


def test_json_schema_rejects_unknown_keys(spec_schema):
    data = yaml.safe_load((ROOT / "specs" / "mobile_2gb.yaml").read_text())
    data["model"]["n_kv_head"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(spec_schema).validate(data)


def test_presets_list_and_show(capsys):
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    assert "mobile_2gb" in out and "qwen2.5_0.5b" in out and "int4_g128" in out
    assert main(["presets", "show", "raspberry_pi5"]) == 0
    out = capsys.readouterr().out
    assert "memory_budget_mb: 6144" in out and "# source: https://" in out
    assert main(["presets", "show", "model/smollm_135m"]) == 0
    capsys.readouterr()
    assert main(["presets", "show", "smolm_135m"]) == 2
    assert "did you mean 'smollm_135m'" in capsys.readouterr().err
