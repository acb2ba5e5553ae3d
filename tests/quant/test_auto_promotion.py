"""`quantization: auto` keeps its most sensitive int4 matrices at int8, measured on calibration
text, within the device budget; the explain table and the manifest say why."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from omnic.compiler import auto_quant as auto
from omnic.compiler.plan import MIB, plan_memory
from omnic.compiler.validate import validate_file
from window_kld import fake_quantized, window_kld

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
# 512 wide: int4 and int8 matrices differ by more than a MiB, so a budget can separate them
MODEL = {"vocab_size": 320, "d_model": 512, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 1024}, "context_length": 64}


def _totals(tiny_spec_file) -> dict[str, int]:
    from omnic.presets import store

    spec = validate_file(
        tiny_spec_file("probe", {"model": MODEL, "targets": {"gguf": {}}})).resolved
    return {n: plan_memory(spec.model_copy(update={"quantization": store.load("quantization", n)}))
            .total_bytes for n in ("int4_g32_asym", "int8")}


@pytest.fixture(scope="module")
def chosen(tiny_spec_file):
    """An auto spec whose budget int4 fits and int8 does not, its model, windows and choice."""
    from omnic.compiler.auto_sensitivity import WindowMeter, calibration_windows
    from omnic.model import build_model
    from omnic.tokenizer import load_tokenizer

    totals = _totals(tiny_spec_file)
    budget = math.ceil(totals["int4_g32_asym"] / MIB) + 1
    assert budget * MIB < totals["int8"]
    path = tiny_spec_file("auto-int4", {"model": MODEL, "quantization": "auto",
                                   "device": {"memory_budget_mb": budget},
                                   "targets": {"onnx": None, "gguf": {}}})
    spec = validate_file(path).resolved
    decoder = build_model(spec, path.parent)
    windows = calibration_windows(spec, load_tokenizer(spec, path.parent), path.parent)
    choice = auto.choose(spec, decoder, WindowMeter(decoder, windows))
    return spec, decoder, windows, choice, path


def test_auto_keeps_measured_sensitive_matrices_at_int8_within_the_budget(chosen):
    from omnic.presets import store
    from omnic.quant.select import storage_id, tensor_schemes

    spec, decoder, windows, choice, _ = chosen
    assert choice.preset.startswith("int4")
    promo = choice.promotion
    assert promo is not None and promo.promoted, choice.reason
    preset = tensor_schemes(spec.model_copy(
        update={"quantization": store.load("quantization", choice.preset)}))
    final_spec = spec.model_copy(update={"quantization": choice.quantization})
    final = tensor_schemes(final_spec)
    names = {p.tensor for p in promo.promoted}
    assert names and all(preset[n].scheme == "int4" for n in names)
    # (override indices shift: the promotions go first)
    assert {n for n in final if storage_id(final[n]) != storage_id(preset[n])} == names
    assert all(final[n].scheme == "int8" and final[n].group_size is None for n in names)
    assert plan_memory(final_spec).fits
    # every promotion's measured gain is the divergence that matrix alone at int8 saves,
    # recomputed independently; the promoted set diverges less than the preset
    before = window_kld(decoder, fake_quantized(decoder, preset), windows)
    assert promo.kld_before == pytest.approx(before, rel=1e-3)
    top = min(promo.promoted, key=lambda p: p.rank)
    alone = {**preset, top.tensor: final[top.tensor]}
    alone_kld = window_kld(decoder, fake_quantized(decoder, alone), windows)
    assert top.gain == pytest.approx(before - alone_kld, rel=1e-3, abs=1e-9)
    after = window_kld(decoder, fake_quantized(decoder, final), windows)
    assert promo.kld_after == pytest.approx(after, rel=1e-3) and after < before
    assert "kept at int8 by measured sensitivity" in choice.reason


def test_explain_says_why_a_promoted_matrix_is_int8(chosen):
    from omnic.targets.explain import explain

    spec, _, _, choice, _ = chosen
    ex = explain(spec.model_copy(update={"quantization": choice.quantization}))
    top = min(choice.promotion.promoted, key=lambda p: p.rank)
    row = ex.lookup(top.tensor)
    assert row.scheme.startswith("int8") and "auto: sensitivity rank 1" in row.rule
    assert "calibration text" in row.rule


def test_compile_records_the_promotions(chosen, tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "compiler"))
    import export_target  # noqa: F401  (registers torch_export)

    from omnic.compiler.pipeline import compile

    path = chosen[-1]
    m = compile(path, tmp_path / "build", targets=["torch_export"], progress=False).manifest
    qa = m.quantization_auto
    assert qa["promotion"]["promoted"], qa
    promoted = {p["tensor"] for p in qa["promotion"]["promoted"]}
    reasons = {o["match"]["name"].replace("\\", ""): o["reason"]
               for o in m.spec["quantization"]["overrides"] if o.get("reason")}
    assert set(reasons) == promoted
    assert m.memory_plan["fits"]


def test_on_a_real_model_promotions_chosen_on_calibration_text_help_on_held_out_text(
        smollm2_cut, tmp_path):
    """SmolLM2-135M (its first blocks) under a budget that int4 fits and int8 does not: the
    matrices auto keeps at int8, measured on the calibration corpus, lower the divergence on
    omnic's golden texts (which the corpus does not contain), encoded by the checkpoint's own
    tokenizer through the `tokenizers` library."""
    import yaml
    from tokenizers import Tokenizer

    from omnic.cli.main import main as omnic_main
    from omnic.compiler.auto_sensitivity import WindowMeter, calibration_windows
    from omnic.model import build_model
    from omnic.presets import store
    from omnic.quant.select import tensor_schemes
    from omnic.tokenizer import load_tokenizer

    path = tmp_path / "smollm2.yaml"
    assert omnic_main(["import", str(smollm2_cut), "-o", str(path), "--context-length", "128",
                       "--targets", "onnx,gguf"]) == 0
    spec = validate_file(path).resolved
    totals = {n: plan_memory(spec.model_copy(update={"quantization": store.load(
        "quantization", n)})).total_bytes for n in ("int4_g32_asym", "int8")}
    budget = math.ceil(totals["int4_g32_asym"] / MIB) + 2
    assert budget * MIB < totals["int8"]
    data = yaml.safe_load(path.read_text())
    data["quantization"] = "auto"
    device = data["device"]
    if isinstance(device, str):  # a device preset, written out to change its budget
        device = store.load("device", device).model_dump(mode="json", exclude_none=True)
    data["device"] = {**device, "memory_budget_mb": budget}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    v = validate_file(path)
    assert v.ok, [str(d) for d in v.errors]
    spec = v.resolved
    decoder = build_model(spec, path.parent)
    windows = calibration_windows(spec, load_tokenizer(spec, path.parent), path.parent)
    choice = auto.choose(spec, decoder, WindowMeter(decoder, windows))
    assert choice.preset.startswith("int4") and choice.promotion.promoted, choice.reason

    tok = Tokenizer.from_file(str(smollm2_cut / "tokenizer.json"))
    held_out = [tok.encode(f.read_text(encoding="utf-8")).ids[:128]
                for f in sorted((REPO / "omnic" / "golden" / "texts").glob("*.txt"))]
    preset = tensor_schemes(spec.model_copy(
        update={"quantization": store.load("quantization", choice.preset)}))
    final = tensor_schemes(spec.model_copy(update={"quantization": choice.quantization}))
    before = window_kld(decoder, fake_quantized(decoder, preset), held_out)
    after = window_kld(decoder, fake_quantized(decoder, final), held_out)
    assert after < before, (choice.preset, [p.tensor for p in choice.promotion.promoted],
                            after, before)
