"""The KLD budget of quantized artifacts: the field reference's cost, or the spec's own.

A tiny int4 spec compiled to GGUF Q4_0 (run by llama.cpp). Its field reference is llama.cpp's
Q4_0 rounding of the same weights with Q8_0 activations, i.e. what the artifact itself is, so
the artifact's measured KLD (from llama.cpp's logits) must equal it closely: an independent check
that the field reference computes what llama.cpp computes.
"""

from __future__ import annotations

import pytest

INT4 = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True}}


@pytest.fixture(scope="module")
def q4_build(tiny_spec_file, tmp_path_factory):
    from omnic.compiler.pipeline import compile

    spec = tiny_spec_file("budget", {"quantization": INT4, "targets": {"gguf": {}}})
    return compile(spec, tmp_path_factory.mktemp("budget") / "build", progress=False)


def test_the_field_reference_is_what_llama_cpp_computes(q4_build):
    (gguf,) = [a for a in q4_build.manifest.artifacts if a.target == "gguf"]
    assert gguf.precision == "q4_0" and gguf.golden.status == "passed"
    field_kld = gguf.golden.metrics["field_kld"]
    assert field_kld > 1e-4  # int4 costs something, even on random weights
    assert gguf.golden.metrics["kld"] == pytest.approx(field_kld, rel=0.02)
    assert gguf.golden.limits["kld"] < 0.1  # not the table's absolute row any more
    # top-1 too: llama.cpp's argmaxes are the field's, up to near-ties flipped by summation order
    assert gguf.golden.metrics["top1_fp32"] == pytest.approx(
        gguf.golden.metrics["field_top1_fp32"], abs=0.05)


def _field(top1: float):
    from omnic.golden.field import FieldCost

    return FieldCost(kld=0.01, method="llama.cpp Q4_0 x7", top1=top1)


def test_the_top1_floor_follows_a_field_that_cannot_reach_it_and_never_rises():
    """Gemma 3's 262k vocabulary over random weights: the field's own argmaxes agree with fp32's
    at 55 % of positions, so the table's 50 % floor would fail artifacts no worse than the field
    (a 270M-shaped ExecuTorch int4 at 48 %, KLD within its budget). A field at 99 % keeps the
    table's floor: the field only lowers it."""
    from omnic.golden.field import judged_by
    from omnic.golden.tolerances import lookup

    row = lookup("executorch", "int4")
    low = judged_by(row, _field(0.55), None, ())
    assert 0.4 < low.top1_fp32 < 0.5 and "0.55" in low.top1_source
    assert "Q4_0" in low.top1_source and low.kld == pytest.approx(0.0125)
    high = judged_by(row, _field(0.99), None, ())
    assert high.top1_fp32 == row.top1_fp32 and not high.top1_source
    assert judged_by(row, _field(0.55), None, {"top1_fp32": 0.5}).top1_fp32 == row.top1_fp32
    spec_budget = judged_by(row, _field(0.55), 0.3, ())
    assert spec_budget.kld == 0.3 and spec_budget.top1_fp32 < 0.5


def test_a_spec_budget_fails_the_compile_and_says_what_the_scheme_costs(tiny_spec_file,
                                                                         tmp_path):
    from omnic.compiler.pipeline import compile

    spec = tiny_spec_file("tight", {"quantization": INT4, "targets": {"gguf": {}},
                                    "golden": {"max_kld": 1e-7}})
    result = compile(spec, tmp_path / "build", progress=False)
    assert result.exit_code == 1
    (gguf,) = [a for a in result.manifest.artifacts if a.target == "gguf"]
    assert gguf.golden.status == "failed"
    assert "golden.max_kld" in gguf.golden.reason
    assert "llama.cpp Q4_0" in gguf.golden.reason and "costs" in gguf.golden.reason
    assert gguf.golden.limits["kld"] == 1e-7


def test_the_reference_noise_is_recorded_and_random_weights_keep_the_table_row(q4_build):
    """Q8_0 activations: the exact reference's float64 twin is measured (golden/noise.py). On
    flat random logits it moves far less than the table's row allows, so the row decides; the
    real model's case is tests/compiler/test_golden_noise.py."""
    from omnic.golden.tolerances import lookup

    (gguf,) = [a for a in q4_build.manifest.artifacts if a.target == "gguf"]
    m, row = gguf.golden.metrics, lookup("gguf", gguf.precision)
    assert 0 < m["ref_noise_max_abs"] < row.atol and m["ref_noise_cosine"] > row.cosine
    assert (gguf.golden.limits["atol"], gguf.golden.limits["cosine"]) == (row.atol, row.cosine)
