"""The farm's report: one record per cell, written as report.json, report.md and report.html.

A cell's record joins what the driver knew before running it (its spec, device, quantization,
memory plan and declared compile memory: `omnic.farm.cells.CheckedCell`) with its task's outcome
(`omnic.farm.task`). Every cell of the matrix has a record, failed ones with their reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omnic.farm import report_format as fm
from omnic.farm import summary as sm
from omnic.farm.cells import SPEC_FILE, CheckedCell, cell_dir
from omnic.farm.report_html import render_html
from omnic.farm.task import LOG_FILE

REPORT_FORMAT = 1
JSON_FILE, MD_FILE, HTML_FILE = "report.json", "report.md", "report.html"


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def cell_record(checked: CheckedCell, outcome: dict[str, Any] | None,
                out_dir: Path) -> dict[str, Any]:
    """The report's record of one cell.

    Args:
        checked: the cell as checked before running (a problem there is its failure).
        outcome: its task's outcome; None when it did not run (then `checked.problem`, or the
            outcome the driver made for it: unschedulable, interrupted, a lost worker).
    """
    cell, v = checked.cell, checked.validation
    folder = cell_dir(out_dir, cell)
    resolved = v.resolved
    record: dict[str, Any] = {
        "id": cell.id, "spec": cell.spec,
        "name": resolved.name if resolved is not None else None,
        "device": cell.device or (resolved.device.name if resolved is not None else None),
        "quantization": cell.quantization,  # None: the spec's own
        "targets": list(checked.targets),
        "compile_peak_bytes": checked.peak_bytes,
        "cell_dir": _rel(folder, out_dir), "spec_file": _rel(folder / SPEC_FILE, out_dir),
        "notes": list(checked.notes),
    }
    plan_memory = sm.memory_of(v.plan.to_dict()) if v.plan is not None else None
    outcome = outcome or {}
    manifest = outcome.get("manifest")
    memory = manifest["memory"] if manifest else plan_memory
    build = outcome.get("build_dir")
    bench = (outcome.get("bench") or {}).get("targets", {})
    per_target = {}
    for t, row in (manifest or {}).get("targets", {}).items():
        per_target[t] = {**row, "decode_tokens_per_s": bench.get(t, {}).get(
            "decode_tokens_per_s"), "bench": bench.get(t)}
    failure = outcome.get("failure")
    if checked.problem is not None:
        failure = {"kind": "invalid", "reason": checked.problem}
    passed = failure is None and outcome.get("status") == "passed"
    if not passed and failure is None:
        failure = {"kind": "lost", "reason": "the cell's task gave no outcome"}
    record.update(
        status="passed" if passed else "failed", failure=failure,
        fits=memory.get("fits") if memory else None, memory=memory,
        build_dir=_rel(folder / build, out_dir) if build else None,
        log=_rel(folder / LOG_FILE, out_dir) if (folder / LOG_FILE).is_file() and outcome
        else None,
        node=outcome.get("node"), seconds=outcome.get("wall_seconds"),
        per_target=per_target,
        bench_error=(outcome.get("bench") or {}).get("error"),
    )
    return record


def build_report(matrix_file: Path, out_dir: Path, cells: list[dict[str, Any]],
                 settings: dict[str, Any], cluster: dict[str, Any] | None) -> dict[str, Any]:
    """The whole report: settings, cluster, a count of passed and failed, every cell."""
    passed = sum(c["status"] == "passed" for c in cells)
    return {
        "omnic_farm": REPORT_FORMAT, "matrix": str(matrix_file), "out_dir": str(out_dir),
        "settings": settings, "cluster": cluster,
        "summary": {"cells": len(cells), "passed": passed, "failed": len(cells) - passed},
        "cells": cells,
    }


# -- writing -------------------------------------------------------------------------------------
def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# omnic farm: {report['matrix']}", "",
             f"{s['cells']} cells: {s['passed']} passed, {s['failed']} failed.", ""]
    cluster = report.get("cluster")
    if cluster:
        largest = fm.fmt_bytes(cluster.get("max_memory"))
        lines += [f"Ray: {cluster.get('address')}, {cluster.get('nodes')} node(s), "
                  f"{cluster.get('cpus'):g} CPUs, largest node {largest} of memory.", ""]
    head = ["cell", "spec", "device", "quantization", "status", "fits the device", "target",
            "size", "golden", "KLD", "decode tok/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in report["cells"]:
        for r in fm.rows(c):
            lines.append("| " + " | ".join(_md_cell(x) for x in (
                c["id"], c["spec"], c["device"] or "-", c["quantization"] or "(spec)",
                fm.status_text(c), fm.fmt_fits(c), r["target"] or "-",
                fm.fmt_bytes(r.get("bytes")), r.get("golden") or "-", fm.fmt_kld(r.get("kld")),
                fm.fmt_rate(r.get("decode_tokens_per_s")))) + " |")
    failed = [c for c in report["cells"] if c["failure"]]
    if failed:
        lines += ["", "## Failures"]
        for c in failed:
            lines += ["", f"### {c['id']}: {c['failure']['kind']}", "", "```",
                      c["failure"]["reason"], "```"]
            if c.get("log"):
                lines += ["", f"Log: `{c['log']}`"]
    notes = [(c["id"], n) for c in report["cells"] for n in c["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {cid}: {_md_cell(n)}" for cid, n in notes]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and report.html in `out_dir`; their paths by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_FILE, "md": out_dir / MD_FILE, "html": out_dir / HTML_FILE}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
