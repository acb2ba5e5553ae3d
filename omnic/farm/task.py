"""One cell's work, as it runs inside a Ray task: compile, summarise, optionally bench.

`cell_events(request)` is the task body: a generator that yields a "started" event as soon as
the task runs (so the driver can log when a cell really starts, not when it was queued) and then
the cell's outcome. `run_cell(request)` is the outcome alone, for callers without Ray.

The outcome is plain JSON data, also written to OUT/cells/<id>/result.json; every failure is an
outcome with a reason, never an exception (Ctrl-C and SIGTERM excepted):
- invalid: the compile refused its input (its exit-2 text);
- golden:  a golden check failed (which artifacts, and why);
- crash:   a stage crashed (the error text; the traceback is in traceback.txt when unexpected);
- bench:   --bench could not measure (the reason) or a runtime crashed measuring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omnic.constants import GoldenStatus
from omnic.farm import summary as sm

BUILD_DIR = "build"  # OUT/cells/<id>/build, or build.failed when a golden check failed
RESULT_FILE = "result.json"
LOG_FILE = "compile.log"
BENCH_FILE = "bench.json"
TRACEBACK_FILE = "traceback.txt"
# --bench: the token counts of `omnic bench`, shortened to fit a small model's context
BENCH_PROMPT, BENCH_DECODE, BENCH_REPEAT = 64, 32, 3


@dataclass(frozen=True)
class CellRequest:
    """What a cell's task needs; every path absolute (the task may run on another node)."""

    cell_id: str
    spec_file: str
    cell_dir: str
    targets: tuple[str, ...]
    cache: str | None  # the build cache folder; None: omnic's default
    bench: bool = False
    threads: int = 1


def where() -> str:
    """This process's node, as the report shows it: the Ray node's address, else the host."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label
        pass
    return socket.gethostname()


@contextlib.contextmanager
def _cell_log(path: Path) -> Iterator[None]:
    """The `omnic` loggers write to the cell's compile.log while the cell runs, nowhere else."""
    logger = logging.getLogger("omnic")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.close()
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def _failure(kind: str, reason: str) -> dict[str, str]:
    return {"kind": kind, "reason": reason}


def _compile(req: CellRequest, folder: Path) -> dict[str, Any]:
    """The compile and what it gave: outcome fields (status, failure, build_dir, manifest)."""
    from omnic.compiler.errors import CompileError, InputError
    from omnic.compiler.pipeline import compile

    build = folder / BUILD_DIR
    try:
        result = compile(req.spec_file, build, targets=list(req.targets), force=True,
                         progress=False, cache=req.cache)
    except InputError as err:
        return {"status": "failed", "failure": _failure("invalid", str(err))}
    except CompileError as err:
        return {"status": "failed", "failure": _failure("crash", str(err))}
    except Exception as err:  # noqa: BLE001 - a crash is the cell's outcome, not the farm's
        (folder / TRACEBACK_FILE).write_text(traceback.format_exc(), encoding="utf-8")
        return {"status": "failed", "failure": _failure(
            "crash", f"{type(err).__name__}: {err} (traceback: {TRACEBACK_FILE})")}
    from omnic.compiler import manifest as mf

    # as written (floats rounded as the manifest stores them), not the compile's in-memory copy
    summary = sm.manifest_summary(mf.load(result.out_dir))
    out: dict[str, Any] = {"build_dir": result.out_dir.name, "manifest": summary,
                           "status": "passed", "failure": None}
    if result.manifest.status != GoldenStatus.PASSED:
        out["status"] = "failed"
        out["failure"] = _failure("golden", "; ".join(sm.golden_failures(summary))
                                  or "golden check failed")
    return out


def _bench(req: CellRequest, folder: Path, build_dir: Path, context: int) -> dict[str, Any]:
    """`omnic bench`'s measurement of the build (bench_build), written to bench.json."""
    from omnic.bench import BenchError, BenchSettings, bench_build
    from omnic.bench import report as bench_report

    prompt = min(BENCH_PROMPT, context // 2)
    settings = BenchSettings(threads=req.threads, prompt_tokens=prompt,
                             decode_tokens=min(BENCH_DECODE, context - prompt),
                             repeat=BENCH_REPEAT)
    log = logging.getLogger(__name__)
    try:
        report = bench_build(build_dir, settings, log=lambda line: log.info(f"bench: {line}"))
    except BenchError as err:
        return {"error": str(err)}
    (folder / BENCH_FILE).write_text(bench_report.dumps(report), encoding="utf-8")
    return sm.bench_summary(report)


def _remove_stale(folder: Path, kept: str | None) -> None:
    """The build of an earlier run that this run did not replace (a passed build/ beside this
    run's build.failed/, or the other way round) goes: the cell folder shows this run only."""
    import shutil

    from omnic.compiler.staging import failed_dir

    build = folder / BUILD_DIR
    for path in (build, failed_dir(build)):
        if path.name != kept and path.exists():
            shutil.rmtree(path, ignore_errors=True)


def run_cell(req: CellRequest) -> dict[str, Any]:
    """Compile one cell (and bench it); the outcome, also written to the cell's result.json."""
    folder = Path(req.cell_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRACEBACK_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    with _cell_log(folder / LOG_FILE):
        out = _compile(req, folder)
        _remove_stale(folder, out.get("build_dir"))
        if req.bench and out.get("build_dir"):
            from omnic.compiler import manifest as mf

            build = folder / out["build_dir"]
            context = mf.load(build).spec["model"]["context_length"]
            out["bench"] = _bench(req, folder, build, context)
            failed = [f"{t}: {r['reason']}" for t, r in out["bench"].get("targets", {}).items()
                      if r["status"] == "error"]
            if out["bench"].get("error"):
                failed.append(out["bench"]["error"])
            if failed and out["status"] == "passed":
                out["status"] = "failed"
                out["failure"] = _failure("bench", "; ".join(failed))
    out.update(cell=req.cell_id, node=where(), pid=os.getpid(),
               wall_seconds=time.perf_counter() - start)
    (folder / RESULT_FILE).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
    return out


def cell_events(req: CellRequest) -> Iterator[dict[str, Any]]:
    """The Ray task body: a "started" event, then the outcome (event "finished")."""
    yield {"event": "started", "cell": req.cell_id, "node": where(), "pid": os.getpid()}
    yield {"event": "finished", **run_cell(req)}
