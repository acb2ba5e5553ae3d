"""`run_farm(matrix, settings)`: the farm's stages, top to bottom.

    load the matrix → expand its cells → check each (torch-free: validate, resolve, plan, the
    memory its compile needs) → write OUT/cells/<id>/spec.yaml → connect to Ray → fail what no
    node can hold → run the rest, one Ray task per cell → report.json, report.md, report.html

A cell that is invalid (its spec, once the matrix's overrides and axis values are merged in,
does not validate or does not fit its device) fails with the errors `omnic validate` would print
and is never sent to Ray. Ctrl-C writes the report of the cells finished so far, the others
marked interrupted; rerunning the farm compiles them again from the build cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omnic.farm import report as rp
from omnic.farm import report_format as fm
from omnic.farm.cells import CheckedCell, cell_dir, check_cell, expand, write_cell_spec
from omnic.farm.matrix import load_matrix
from omnic.farm.task import CellRequest

_log = logging.getLogger(__name__)

INTERRUPTED = ("the farm was interrupted before this cell finished; run the farm again to "
               "resume (what finished comes from the build cache)")


@dataclass(frozen=True)
class FarmSettings:
    """How the farm runs (the `omnic farm` options)."""

    out_dir: Path
    address: str | None = None  # None: a local Ray instance
    cache_dir: str | None = None  # None: omnic's default build cache
    bench: bool = False
    jobs: int | None = None  # at most this many cells at once (None: as Ray schedules)
    cpus_per_cell: int = 1


@dataclass
class FarmResult:
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.report["summary"]["failed"] == 0


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else "")


def _log_record(record: dict[str, Any]) -> None:
    if record["failure"] is None:
        built = ", ".join(f"{t} {fm.fmt_bytes(r['bytes'])} kld {fm.fmt_kld(r['kld'])}"
                          for t, r in record["per_target"].items())
        seconds = f" in {record['seconds']:.1f}s" if record.get("seconds") else ""
        _log.info(f"✓ {record['id']}: passed{seconds}: {built}")
        return
    f = record["failure"]
    _log.error(f"✗ {record['id']}: failed ({f['kind']}): {_first_line(f['reason'])}")


def _request(checked: CheckedCell, out_dir: Path, settings: FarmSettings) -> CellRequest:
    folder = cell_dir(out_dir, checked.cell)
    cache = str(Path(settings.cache_dir).expanduser().resolve()) if settings.cache_dir else None
    return CellRequest(cell_id=checked.cell.id, spec_file=str(folder / "spec.yaml"),
                       cell_dir=str(folder), targets=tuple(checked.targets), cache=cache,
                       bench=settings.bench, threads=settings.cpus_per_cell)


def run_farm(matrix_path: Path | str, settings: FarmSettings) -> FarmResult:
    """Compile every cell of a matrix on Ray and write the report into `settings.out_dir`.

    Raises:
        omnic.farm.matrix.MatrixError: the matrix file is invalid (nothing was run or written).
    """
    from omnic.farm import scheduler

    loaded = load_matrix(matrix_path)
    out_dir = Path(settings.out_dir).resolve()
    cells, read_problems = expand(loaded)
    checked = [check_cell(c, loaded.matrix.targets, read_problems[c.spec]) for c in cells]
    for ch in checked:
        write_cell_spec(out_dir, ch.cell, loaded.path)
    runnable = [ch for ch in checked if ch.runnable]
    _log.info(f"farm: {len(cells)} cells from {matrix_path} ({len(runnable)} to compile, "
              f"{len(cells) - len(runnable)} invalid); output in {out_dir}")
    outcomes: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    by_id = {ch.cell.id: ch for ch in checked}

    def finished(cell_id: str, outcome: dict[str, Any] | None) -> None:
        if outcome is not None:
            outcomes[cell_id] = outcome
        records[cell_id] = rp.cell_record(by_id[cell_id], outcome, out_dir)
        _log_record(records[cell_id])

    for ch in checked:
        if not ch.runnable:
            finished(ch.cell.id, None)
    cluster = None
    settings_dict = {"targets": list(loaded.matrix.targets or []) or None,
                     "cache_dir": settings.cache_dir, "bench": settings.bench,
                     "jobs": settings.jobs, "cpus_per_cell": settings.cpus_per_cell}
    try:
        if runnable:
            verbose = logging.getLogger("omnic").isEnabledFor(logging.DEBUG)
            cluster = scheduler.connect(settings.address, verbose)
            _log.info(f"farm: Ray at {cluster.address}: {cluster.nodes} node(s), "
                      f"{cluster.cpus:g} CPUs, largest node "
                      f"{cluster.max_memory / scheduler.GIB:.1f} GiB")
            requests = []
            for ch in runnable:
                why = scheduler.unschedulable(cluster, ch.peak_bytes, settings.cpus_per_cell)
                if why:
                    finished(ch.cell.id, {"status": "failed", "failure": {
                        "kind": "unschedulable", "reason": why}})
                else:
                    requests.append((_request(ch, out_dir, settings), ch.peak_bytes))
            scheduler.run_cells(requests, settings.cpus_per_cell, settings.jobs,
                                lambda req, outcome: finished(req.cell_id, outcome))
    except Exception as err:  # Ray lost or never reached: the cells not finished fail with it
        if os.environ.get("OMNIC_DEBUG"):
            raise
        _log.error(f"farm: {err}")
        _unfinished(checked, records, finished, "error", f"the farm stopped: {err}")
    except BaseException:  # Ctrl-C, SIGTERM: report what finished, then stop
        _unfinished(checked, records, finished, "interrupted", INTERRUPTED)
        _write(loaded.path, out_dir, checked, records, settings_dict, cluster)
        raise
    finally:
        if cluster is not None:
            scheduler.disconnect(cluster)
    return _write(loaded.path, out_dir, checked, records, settings_dict, cluster)


def _unfinished(checked: list[CheckedCell], records: dict[str, Any],
                finished: Callable[[str, dict[str, Any]], None], kind: str, reason: str) -> None:
    for ch in checked:
        if ch.cell.id not in records:
            finished(ch.cell.id, {"status": "failed", "failure": {"kind": kind,
                                                                  "reason": reason}})


def _write(matrix_file: Path, out_dir: Path, checked: list[CheckedCell],
           records: dict[str, dict[str, Any]], settings: dict[str, Any],
           cluster: Any) -> FarmResult:
    cells = [records[ch.cell.id] for ch in checked]
    report = rp.build_report(matrix_file, out_dir, cells, settings,
                             cluster.to_dict() if cluster is not None else None)
    paths = rp.write_reports(report, out_dir)
    s = report["summary"]
    _log.info(f"farm: {s['passed']} of {s['cells']} cells passed; report: {paths['html']}")
    return FarmResult(report, paths)
