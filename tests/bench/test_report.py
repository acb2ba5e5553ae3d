"""The bench report's warning about a loaded machine (omnic/bench/report.py)."""

from __future__ import annotations

from omnic.bench import report as rp


def _report(before, after, cpus=2):
    return {"host": {"cpus": cpus}, "load_average": {"before": before, "after": after}}


def test_warns_only_when_the_load_exceeds_the_cpus():
    assert rp.loaded(_report([0.4, 1.0, 1.0], [1.9, 1.0, 1.0])) is None
    warning = rp.loaded(_report([0.4, 1.0, 1.0], [3.8, 1.0, 1.0]))
    assert warning is not None and "3.8 on 2 CPUs" in warning
    assert rp.loaded(_report([5.0, 1.0, 1.0], None, cpus=8)) is None
    assert rp.loaded({"host": {}, "load_average": {"before": [9.0]}}) is None  # cpus unknown
