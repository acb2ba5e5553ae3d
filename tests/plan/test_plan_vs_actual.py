"""Issue 7's "artifact sizes within 3 % of the plan", on the session's pocket-chat build.

Uses the shared `mobile_2gb_build` (specs/mobile_2gb.yaml, all five targets, ~7 min, built once
per session by tests/conftest.py): every artifact's bytes, compiled code excluded, must be within
3 % of its target's prediction, and the manifest must say how it compared.
"""

from __future__ import annotations

import pytest

from omnic.targets.footprint import TOLERANCE


@pytest.mark.slow
def test_every_artifact_is_within_3_percent_of_its_target_plan(mobile_2gb_build):
    m = mobile_2gb_build.manifest
    rows = {p.target: p for p in m.plan_vs_actual if p.component == "decoder"}
    assert set(rows) == set(m.targets)
    planned = {a["target"]: a for a in m.memory_plan["artifacts"]}
    for target, p in rows.items():
        assert p.basis == "target" and p.tolerance == TOLERANCE
        assert p.planned_bytes == planned[target]["bytes"]
        assert p.compared_bytes + p.excluded_bytes == p.actual_bytes
        assert p.ratio == pytest.approx(p.compared_bytes / p.planned_bytes)
        assert p.within_tolerance, f"{target}: {p.compared_bytes} vs planned {p.planned_bytes}"
    assert rows["tvm"].excluded_bytes > 0  # the compiled library is listed, not compared
    assert all(rows[t].excluded_bytes == 0 for t in rows if t != "tvm")
