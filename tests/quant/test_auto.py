"""`quantization: auto`: candidates, the torch-free placeholder, the measured choice, the
manifest."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from omnic.compiler.plan import MIB, plan_memory
from omnic.compiler import auto_quant as auto
from omnic.compiler.validate import validate_file

REPO = Path(__file__).resolve().parents[2]
# 256 wide: the candidates' memory totals differ by whole MiB, so a budget can separate them
MODEL = {"vocab_size": 320, "d_model": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 512}, "context_length": 64}


def budget_between(tiny_spec_file) -> int:
    """A budget (MiB) that int8 fits and fp16 does not (computed from the plan, not assumed)."""
    from omnic.presets import store

    spec = validate_file(
        tiny_spec_file("probe", {"model": MODEL, "targets": {"gguf": {}}})).resolved
    totals = {n: plan_memory(spec.model_copy(update={"quantization":
                                                     store.load("quantization", n)}))
              .total_bytes for n in ("fp16", "int8")}
    budget = math.ceil(totals["int8"] / MIB)
    assert totals["fp16"] > budget * MIB
    return budget


def auto_spec(tiny_spec_file, name: str, budget: int, targets: dict | None = None) -> Path:
    return tiny_spec_file(name, {"model": MODEL, "quantization": "auto",
                                 "device": {"memory_budget_mb": budget},
                                 "targets": targets or {"onnx": None, "gguf": {}}})


def test_auto_validates_and_plans_with_the_largest_eligible_preset(tiny_spec_file):
    budget = budget_between(tiny_spec_file)
    v = validate_file(auto_spec(tiny_spec_file, "auto1", budget))
    assert v.ok, [str(d) for d in v.errors]
    assert v.spec.quantization == "auto"
    by_name = {c.name: c for c, _ in auto.evaluate(v.resolved)}
    assert not by_name["fp32"].fits and not by_name["fp16"].fits and by_name["int8"].fits
    assert not by_name["int4_g128"].carried  # GGUF has no 128-wide int4 block
    assert any("group_size 128" in p for p in by_name["int4_g128"].problems)
    eligible = [c for c in by_name.values() if c.eligible]
    worst = max(eligible, key=lambda c: c.total_bytes)
    # the plan is the largest preset compile may pick
    assert plan_memory(v.resolved).total_bytes == worst.total_bytes
    assert worst.name in ("int8", "int8_g32")


def test_auto_with_nothing_eligible_is_a_validation_error(tiny_spec_file):
    v = validate_file(auto_spec(tiny_spec_file, "auto2", 16))
    assert not v.ok
    (err,) = [d for d in v.errors if d.path == ("quantization",)]
    assert "no quant preset fits" in err.message and "fp32: needs" in err.message


def test_json_schema_accepts_auto():
    jsonschema = pytest.importorskip("jsonschema")
    import json

    schema = json.loads((REPO / "schemas" / "omnic-spec.schema.json").read_text())
    q = schema["properties"]["quantization"]
    jsonschema.validate("auto", {**q, "$defs": schema.get("$defs", {})})


def test_choose_measures_kld_on_calibration_text_like_an_independent_torch_run(tiny_spec_file):
    """The KLD `choose` reports for int8 is the KL divergence a plain torch run of the
    fake-quantized model gives on windows of the built-in calibration text, which the model's
    tokenizer encodes (recomputed here with torch ops and numpy)."""
    pytest.importorskip("torch")
    from omnic.compiler.auto_sensitivity import WindowMeter, calibration_windows
    from omnic.model import build_model
    from omnic.presets import store
    from omnic.quant.calibration_text import builtin_texts
    from omnic.quant.select import tensor_schemes
    from omnic.tokenizer import load_tokenizer

    budget = budget_between(tiny_spec_file)
    path = auto_spec(tiny_spec_file, "auto3", budget)
    spec = validate_file(path).resolved
    decoder = build_model(spec, path.parent)
    tokenizer = load_tokenizer(spec, path.parent)
    windows = calibration_windows(spec, tokenizer, path.parent)
    # the windows are the built-in text as the tokenizer encodes it, cut to the context
    text_ids = {i for t in builtin_texts() for i in tokenizer.encode(t)}
    assert windows and all(0 < len(w) <= spec.model.context_length for w in windows)
    assert set().union(*map(set, windows)) <= text_ids
    choice = auto.choose(spec, decoder, WindowMeter(decoder, windows))
    by_name = {c.name: c for c in choice.candidates}
    eligible = [c for c in choice.candidates if c.eligible]
    assert choice.preset == min(eligible, key=lambda c: c.kld).name
    assert choice.preset.startswith("int8")  # fp32/fp16 do not fit, int8 beats int4
    assert by_name["int8"].kld < by_name["int4_g32"].kld  # more bits, less divergence
    assert by_name["fp32"].kld is None  # not eligible: not measured
    assert choice.promotion is None  # int8 has no int4 matrix to promote

    # independent: int8 weights rounded by hand, fp32 and int8 models run over each window
    from window_kld import fake_quantized, window_kld

    plan = tensor_schemes(
        spec.model_copy(update={"quantization": store.load("quantization", "int8")}))
    assert by_name["int8"].kld == pytest.approx(
        window_kld(decoder, fake_quantized(decoder, plan), windows), rel=1e-3)


def test_compile_records_the_choice_in_the_manifest(tiny_spec_file, tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "tests" / "compiler"))
    import export_target  # noqa: F401  (registers torch_export)

    from omnic.compiler.pipeline import compile

    budget = budget_between(tiny_spec_file)
    path = auto_spec(tiny_spec_file, "auto4", budget)
    result = compile(path, tmp_path / "build", targets=["torch_export"], progress=False)
    m = result.manifest
    qa = m.quantization_auto
    measured = [c for c in qa["candidates"] if c["kld"] is not None]
    assert qa["mode"] == "auto" and qa["chosen"] == min(measured, key=lambda c: c["kld"])["name"]
    assert "lowest KLD" in qa["reason"] and "not eligible" in qa["reason"]
    assert {c["name"] for c in qa["candidates"]} >= {"fp32", "int8", "int4_g32"}
    # the manifest's resolved spec is the chosen preset, and so is its plan
    from omnic.presets import store

    assert m.spec["quantization"] == (
        store.load("quantization", qa["chosen"]).model_dump(mode="json"))
    chosen = next(c for c in qa["candidates"] if c["name"] == qa["chosen"])
    assert m.memory_plan["total_bytes"] == chosen["total_bytes"]
