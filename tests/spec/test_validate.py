"""Semantic checks and the target capability table (beyond the malformed corpus)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from omnic.compiler.validate import load_resolved, validate_file
from omnic.spec.load import SpecError
from omnic.targets import rules

TINY = {
    "omnic": 1, "name": "tiny", "device": "desktop_cpu",
    "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
              "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64,
              "tie_embeddings": True},
    "quantization": {"weights": {"scheme": "int4", "group_size": 32}},
    "targets": {"onnx": {}},
    "golden": {"cases": 1, "prompt_tokens": 8, "decode_steps": 4},
}


def run(tmp_path: Path, **changes):
    data = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        node, *path, last = [data] + dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return validate_file(path)


def messages(result, severity="error"):
    return {(d.field, d.message) for d in result.diagnostics if d.severity == severity}


def fields(result, severity="error"):
    return {d.field for d in result.diagnostics if d.severity == severity}


def test_tiny_spec_is_valid(tmp_path):
    result = run(tmp_path)
    assert result.ok, result.diagnostics
    assert result.resolved.model.head_dim == 16 and result.plan.fits


def test_role_override_matching_nothing_is_a_warning(tmp_path):
    # a shared quant preset may target lm_head; on a tied model there is none: warn, not fail
    result = run(tmp_path,
                 quantization__overrides=[{"match": {"role": "lm_head"}, "scheme": "int8"}])
    assert result.ok
    assert fields(result, "warning") == {"quantization.overrides[0].match"}


def test_shadowed_and_norm_only_overrides_are_warnings(tmp_path):
    result = run(tmp_path, quantization__overrides=[
        {"match": {"role": "attention"}, "scheme": "int8"},
        {"match": {"name": r"layers\.0\.attn\.q\.weight"}, "scheme": "fp16"},
        {"match": {"name": r".*norm.*"}, "scheme": "fp16"},
    ])
    assert result.ok
    warned = {d.field: d.message for d in result.warnings}
    assert "earlier override" in warned["quantization.overrides[1].match"]
    assert "norms" in warned["quantization.overrides[2].match"]


def test_layer_range_beyond_the_model_warns(tmp_path):
    result = run(tmp_path,
                 quantization__overrides=[{"match": {"layers": [5, 9]}, "scheme": "int8"}])
    assert result.ok and "matches no tensor" in result.warnings[0].message


@pytest.mark.parametrize("deployment_target, ok", [("iOS17", False), ("macOS14", False),
                                                    ("iOS18", True), ("macOS15", True)])
def test_coreml_int4_needs_ios18(tmp_path, deployment_target, ok):
    result = run(tmp_path, targets={"coreml": {"deployment_target": deployment_target}})
    assert result.ok is ok
    if not ok:
        assert fields(result) == {"targets.coreml.deployment_target"}


def rule_ids(result) -> set[str]:
    return {rule.id for rule, _ in rules.findings(result.resolved)}


def test_coreml_int8_per_channel_works_before_ios18_but_blocks_do_not(tmp_path):
    # (the Core ML target's own rules may refuse iOS16 for other reasons, e.g. stateful KV)
    per_channel = run(tmp_path, quantization={"weights": {"scheme": "int8"}},
                      targets={"coreml": {"deployment_target": "iOS16"}})
    assert "coreml.int8_blocks_need_ios18" not in rule_ids(per_channel)
    blocks = run(tmp_path, quantization={"weights": {"scheme": "int8", "group_size": 32}},
                 targets={"coreml": {"deployment_target": "iOS16"}})
    assert "coreml.int8_blocks_need_ios18" in rule_ids(blocks)
    assert fields(blocks) == {"targets.coreml.deployment_target"}


def test_target_rule_modules_are_loaded_by_validation(tmp_path):
    """omnic/targets/<id>/rules.py (when it exists) is imported for each enabled target."""
    import subprocess
    import sys

    assert run(tmp_path, targets={"coreml": {}}).ok
    code = ("import sys; from omnic.compiler.validate import validate_file\n"
            f"assert validate_file({str(tmp_path / 'spec.yaml')!r}).ok\n"
            "from omnic.targets.rules import RULE_MODULE, RULES\n"
            "print(RULE_MODULE.format('coreml') in sys.modules, sorted({r.target for r in RULES}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, targets = out.stdout.split(" ", 1)
    import importlib.util

    exists = importlib.util.find_spec("omnic.targets.coreml.rules") is not None
    assert loaded == str(exists)


def test_coreml_int8_kv_cache_and_bf16_are_rejected(tmp_path):
    result = run(tmp_path, quantization={"weights": {"scheme": "bf16"}, "kv_cache": "int8"},
                 targets={"coreml": {}})
    assert fields(result) == {"quantization.kv_cache", "quantization.weights.scheme"}


def test_coreml_on_an_older_iphone_is_rejected(tmp_path):
    device = {"name": "old_iphone", "memory_budget_mb": 2000, "bandwidth_gbps": 30.0,
              "os": "ios", "os_version": "17.5"}
    result = run(tmp_path, device=device, targets={"coreml": {"deployment_target": "iOS18"}})
    assert any("runs ios 17.5" in m for _, m in messages(result))


def test_executorch_xnnpack_bf16_error_portable_ok(tmp_path):
    bad = run(tmp_path, quantization={"weights": {"scheme": "bf16"}}, targets={"executorch": {}})
    assert fields(bad) == {"quantization.weights.scheme"}
    ok = run(tmp_path, quantization={"weights": {"scheme": "bf16"}},
             targets={"executorch": {"backend": "portable"}})
    assert ok.ok


def test_override_error_points_at_the_override(tmp_path):
    result = run(tmp_path, quantization__overrides=[{"match": {"role": "ffn"}, "scheme": "bf16"}],
                 targets={"coreml": {}})
    assert fields(result) == {"quantization.overrides[0].scheme"}


def test_gguf_odd_widths_warn(tmp_path):
    result = run(tmp_path, model__d_model=72, model__n_heads=4, model__n_kv_heads=2,
                 quantization={"weights": {"scheme": "int8"}}, targets={"gguf": {}})
    assert result.ok and fields(result, "warning") == {"targets.gguf"}


def test_capability_table_is_extensible_and_feeds_target_check(tmp_path):
    resolved = run(tmp_path, targets={"tvm": {}}).resolved

    @rules.register("tvm", "test.always", "a test rule", "https://example.invalid")
    def _always(ctx):
        yield rules.Finding(("targets", "tvm", "opt_level"), "test rule fired")

    try:
        problems = rules.problems(resolved, "tvm")
        assert [(p.target, p.field, p.message) for p in problems] == \
            [("tvm", "targets.tvm.opt_level", "test rule fired")]
        assert rules.problems(resolved, "onnx") == []
    finally:
        rules.RULES[:] = [r for r in rules.RULES if r.id != "test.always"]


def test_unknown_preferred_target_on_inline_device(tmp_path):
    device = {"name": "board", "memory_budget_mb": 512, "bandwidth_gbps": 4.0, "os": "linux",
              "preferred_targets": ["onnx", "ggfu"]}
    result = run(tmp_path, device=device)
    assert ("device.preferred_targets[1]",
            "unknown target 'ggfu'; did you mean 'gguf'?") in messages(result)


def test_load_resolved_raises_with_every_error(tmp_path):
    path = tmp_path / "bad.yaml"
    data = copy.deepcopy(TINY)
    data["model"]["n_layers"] = -1
    data["model"]["d_modle"] = 3
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_resolved(path)
    assert {d.field for d in err.value.diagnostics} == {"model.n_layers", "model.d_modle"}


def test_huggingface_paths_must_hold_their_files(tmp_path):
    (tmp_path / "hf").mkdir()
    result = run(tmp_path, weights={"source": "huggingface", "path": "hf"},
                 tokenizer={"kind": "huggingface", "path": "hf"})
    assert {f for f, _ in messages(result)} == {"weights.path", "tokenizer.path"}
    # the files are opened too: placeholders that only exist are not a checkpoint
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    result = run(tmp_path, weights={"source": "huggingface", "path": "hf"},
                 tokenizer={"kind": "huggingface", "path": "hf"})
    found = messages(result)
    assert {f for f, _ in found} == {"weights.path", "tokenizer.path"}
    assert any("no model.safetensors" in m for _, m in found)
    assert any("not a Hugging Face tokenizer.json" in m for _, m in found)


def test_errors_inside_a_preset_file_point_into_that_file(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    (presets / "devices").mkdir(parents=True)
    board = presets / "devices" / "broken_board.yaml"
    board.write_text("name: broken_board\nmemory_budget_mb: -5\nbandwidth_gbps: 2.0\nos: linux\n")
    monkeypatch.setenv("OMNIC_PRESET_PATH", str(presets))
    result = run(tmp_path, device="broken_board")
    [err] = result.errors
    assert (err.location.file, err.location.line, err.field) == (
        str(board), 2, "device.memory_budget_mb")
