"""`omnic golden update` writes golden/<spec>/ that the comparison accepts, and rejects drift."""

from __future__ import annotations

import json

from omnic.cli.main import main
from omnic.compiler.validate import load_resolved
from omnic.golden import summary


def test_golden_update_round_trip(tiny_spec_file, tmp_path):
    spec = tiny_spec_file("goldtool", {"quantization": {"weights": {"scheme": "int4",
                                                                    "group_size": 32}}})
    assert main(["golden", "update", str(spec), "--golden-dir", str(tmp_path)]) == 0
    inputs = json.loads((tmp_path / "goldtool" / "inputs.json").read_text())
    expected = json.loads((tmp_path / "goldtool" / "expected.json").read_text())
    assert len(inputs["prompts"]) == 2 and len(inputs["prompts"][0]) == 8
    assert sorted(expected["references"]) == ["fp32", "quant_reference"]
    assert expected["references"]["fp32"]["logits"]["shape"] == [2, 11, 320]
    # int4 weights move the logits: the two summaries differ, each matches its own recompute.
    fp32, quant = expected["references"]["fp32"], expected["references"]["quant_reference"]
    assert summary.compare_reference("x", fp32, quant)
    again_inputs, again = summary.compute(spec, load_resolved(spec))
    assert again_inputs == inputs
    for name, ref in expected["references"].items():
        assert summary.compare_reference(name, ref, again["references"][name]) == []
    assert main(["golden", "update", str(tmp_path / "missing.yaml"), "--golden-dir",
                 str(tmp_path)]) == 2
