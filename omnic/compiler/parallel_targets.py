"""`omnic compile --jobs N`: targets lowered and checked in worker processes at once.

Each target runs in a process forked from the compile after its reference stage, so the worker
starts with the built program and the fp32 reference in memory (shared, copy-on-write), writes
its folder and golden references into the staging directory, and sends back its share of the
manifest (a picklable value) and its stage timings.

How many run at once is bounded twice: by N, and by memory. Each target's peak is estimated
from the memory plan (omnic.compiler.compile_cost); a target starts only while the estimates of
those running plus its own fit in the memory the machine has available (MemAvailable) when the
targets start, or in $OMNIC_JOBS_MEMORY when set. One target always runs, whatever its estimate.

A forked worker runs single-threaded (`single_threaded`): torch, llama.cpp and TVM. The compile's
torch used the OpenMP thread pool before the fork, and libgomp's pool does not survive one: the
first parallel region in the child waits forever for threads that were not copied (llama.cpp
links the same libgomp.so.1 torch loaded). With one thread, no library enters a parallel region.
Libraries that keep a process-wide pool of their own (the ExecuTorch runtime's threadpool) must
not have run in the compiling process before it forks: run `--jobs` compiles in a fresh process
(the CLI does; `omnic farm` runs each cell in its own worker process).

Progress: one live line per target (waiting, its current stage and time, done), on stderr.
A worker that fails ends the compile: the others are stopped and the error is raised as it
would be without --jobs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from omnic.compiler.errors import CompileError, InputError

_log = logging.getLogger(__name__)
_channel: Connection | None = None  # in a worker: where phase() reports to
STOP_SECONDS = 10  # a stopped worker's grace before it is killed
MEMORY_ENV = "OMNIC_JOBS_MEMORY"


def phase(name: str) -> None:
    """Report the stage a worker enters (no-op outside a worker)."""
    if _channel is not None:
        _channel.send(("phase", name))


@dataclass
class _Job:
    name: str
    estimate: int
    state: str = "waiting"
    started: float = 0.0
    ended: float = 0.0
    process: Any = None
    conn: Connection | None = None
    result: Any = None
    error: tuple[str, int | None, str] | None = None
    extra: list[Any] = field(default_factory=list)


def single_threaded() -> None:
    """In a worker: torch, llama.cpp (OMNIC_THREADS) and TVM (TVM_NUM_THREADS) on one thread."""
    import torch

    torch.set_num_threads(1)
    os.environ["OMNIC_THREADS"] = "1"
    os.environ["TVM_NUM_THREADS"] = "1"


def available_bytes() -> int:
    """The memory --jobs plans with: $OMNIC_JOBS_MEMORY (e.g. 8G, for a share of a machine or
    a container's limit), else what the machine has available now."""
    if os.environ.get(MEMORY_ENV):
        from omnic.compiler.compile_cost import parse_size

        return parse_size(os.environ[MEMORY_ENV], MEMORY_ENV)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with omnic[torch]
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def run(work: Callable[[str], tuple[Any, list[Any]]], names: list[str], jobs: int,
        estimates: dict[str, int], console: Any = None,
        done: Callable[[str, Any], None] | None = None) -> dict[str, tuple[Any, list[Any]]]:
    """`work(name)` for every name, up to `jobs` at once in forked processes, within memory.

    `work` returns (value, timings); `done(name, value)` runs in this process as each finishes.
    Returns {name: (value, timings)} in the order of `names`; raises the first worker's error.
    """
    ctx = multiprocessing.get_context("fork")
    budget = available_bytes()
    queue = [_Job(n, estimates.get(n, 0)) for n in names]
    pending, running, finished = list(queue), [], []
    live = _live(console, queue)
    try:
        while pending or running:
            while pending and len(running) < jobs and (
                    not running or sum(j.estimate for j in running) + pending[0].estimate
                    <= budget):
                job = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                job.process = ctx.Process(target=_worker, args=(work, job.name, child),
                                          name=f"omnic-{job.name}")
                job.process.start()
                child.close()
                job.conn, job.state, job.started = parent, "starting", time.perf_counter()
                running.append(job)
            for conn in wait([j.conn for j in running], timeout=0.25):
                job = next(j for j in running if j.conn is conn)
                _receive(job)
                if job.state in ("done", "failed"):
                    job.ended = time.perf_counter()
                    job.process.join()
                    running.remove(job)
                    finished.append(job)
                    if job.error is not None:
                        raise _rebuilt(job.error)
                    if done is not None:
                        done(job.name, job.result)
            if live is not None:
                live.update(_table(queue), refresh=True)
    finally:
        for job in running:  # a failure or an interrupt: the others stop now
            if job.process.is_alive():
                job.process.terminate()
        for job in running:
            job.process.join(STOP_SECONDS)
            if job.process.is_alive():  # deaf to SIGTERM inside a native call
                job.process.kill()
                job.process.join()
        if live is not None:
            live.update(_table(queue), refresh=True)
            live.stop()
    return {j.name: (j.result, j.extra) for j in sorted(finished, key=lambda j: names.index(
        j.name))}


def _receive(job: _Job) -> None:
    try:
        kind, *payload = job.conn.recv()
    except EOFError:  # the worker died without a word (killed, out of memory)
        job.process.join(5)
        code = job.process.exitcode
        job.state, job.error = "failed", ("CompileError", None, (
            f"{job.name}: the worker process ended without a result (exit code {code}); rerun "
            "without --jobs"))
        return
    if kind == "phase":
        job.state = payload[0]
    elif kind == "done":
        job.state, (job.result, job.extra) = "done", payload
    else:
        job.state, job.error = "failed", tuple(payload)


def _worker(work: Callable[[str], tuple[Any, list[Any]]], name: str, conn: Connection) -> None:
    global _channel
    _channel = conn
    # The compile handles Ctrl-C and SIGTERM and stops its workers; a worker just ends. Its
    # output goes to the terminal, not to the compile's live display it was forked inside.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    try:
        value, timings = work(name)
        conn.send(("done", value, timings))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the compile
        if os.environ.get("OMNIC_DEBUG"):
            traceback.print_exc()
        if isinstance(err, (CompileError, InputError)):
            conn.send(("error", type(err).__name__, None, str(err)))
        elif isinstance(err, OSError) and err.errno is not None:
            conn.send(("error", "OSError", err.errno, f"{err.strerror}: {err.filename}"
                       if err.filename else str(err.strerror)))
        else:
            conn.send(("error", "CompileError", None, f"{name}: {type(err).__name__}: {err}"))
    finally:
        conn.close()


def _rebuilt(error: tuple[str, int | None, str]) -> BaseException:
    """A worker's error as this process raises it: CompileError and InputError keep their
    type (and exit status), an OSError its errno (a full disk is reported as one)."""
    kind, errno, message = error
    if kind == "OSError":
        return OSError(errno, message)
    return InputError(message) if kind == "InputError" else CompileError(message)


def _live(console: Any, queue: list[_Job]) -> Any:
    if console is None or console.quiet:
        return None
    from rich.live import Live

    # refreshed by run()'s loop, not by a thread of its own: a thread holding the console's lock
    # when a worker forks would leave that lock held forever in the worker
    live = Live(_table(queue), console=console, auto_refresh=False, transient=False,
                redirect_stdout=False, redirect_stderr=False)
    live.start()
    return live


def _table(queue: list[_Job]) -> Any:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    now = time.perf_counter()
    for j in queue:
        seconds = (j.ended or now) - j.started if j.started else 0.0
        style = {"done": "green", "failed": "bold red", "waiting": "dim"}.get(j.state, "cyan")
        table.add_row(f"[bold]{j.name}[/]", f"[{style}]{j.state}[/]",
                      f"{seconds:6.1f}s" if j.started else "", f"~{j.estimate / 2**30:.1f} GiB")
    return table


def run_targets(work: Callable[[str], Any], todo: list[str], jobs: int, plan: Any, stage: Any,
                done: Callable[[str, Any], None]) -> dict[str, Any]:
    """The pipeline's `work(t)` for each target of `todo`: in this process one after another,
    or with jobs > 1 in workers (`run`), whose stage timings join `stage`'s records."""
    if jobs <= 1 or len(todo) <= 1:
        out = {}
        for t in todo:
            out[t] = work(t)
            done(t, out[t])
        return out
    from omnic.compiler.compile_cost import longest_first, stage_peak_bytes

    def in_worker(t: str) -> tuple[Any, list[Any]]:
        single_threaded()
        stage.console.quiet = True  # the parent shows one line per target
        stage.on_start = phase
        first = len(stage.records["targets"])
        return work(t), stage.records["targets"][first:]

    peaks = {t: stage_peak_bytes(plan, t) for t in todo}
    ran = run(in_worker, longest_first(todo), jobs, peaks, stage.console, done)
    for t in todo:
        stage.records["targets"] += ran[t][1]
    return {t: ran[t][0] for t in todo}
