"""Running cells on Ray: a local instance, or an existing cluster (`address`).

Every cell is one Ray task (`omnic.farm.task.cell_events`) that declares its compile's peak
memory (`omnic.compiler.compile_cost.compile_peak_bytes`) as the task's `memory=` resource, so
Ray runs on each node only as many compiles as its memory holds. A cell that needs more memory
(or more CPUs) than any node of the cluster has would wait forever: it is failed before it is
submitted, with that reason.

Each task runs in a fresh worker process (`max_calls=1`: the declared peak counts one compile per
process, and nothing a compile imported or kept stays for the next), is not retried (a rerun of
the farm resumes from the build cache instead), and sees the driver's `OMNIC_*` environment
(preset path, cache switches). The cell folders and the build cache must be on a file system
every node sees, as they are on one machine.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from omnic.farm.task import CellRequest, cell_events

_log = logging.getLogger(__name__)

GIB = 1 << 30
# The local instance's object store: the tasks return a few kB of JSON each.
OBJECT_STORE_BYTES = 100 * (1 << 20)
ENV_PREFIX = "OMNIC_"
PROBE_TIMEOUT_S = 10.0


class FarmError(RuntimeError):
    """Ray could not be reached or started; the cells not run yet fail with this reason."""


@dataclass(frozen=True)
class Cluster:
    """What the connected Ray cluster offers."""

    address: str
    nodes: int
    cpus: float
    max_memory: int  # the largest node's `memory` resource, bytes
    max_cpus: float  # the largest node's CPUs
    started: bool  # a local instance this process started
    owned: bool  # this process connected (or started) it, and disconnects when done

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "nodes": self.nodes, "cpus": self.cpus,
                "max_memory": self.max_memory, "max_cpus": self.max_cpus,
                "local": self.started}


def connect(address: str | None, verbose: bool = False) -> Cluster:
    """Connect to the cluster at `address`, or start a local Ray instance (no dashboard, a small
    object store, no usage statistics: this host may have no internet)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    started, owned = False, True
    if address:
        _probe(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=verbose, configure_logging=False)
        elif not ray.is_initialized():
            ray.init(include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                     log_to_driver=verbose, configure_logging=False)
            started = True
        else:  # the caller's own Ray session: used, and left connected
            owned = False
    except Exception as err:  # noqa: BLE001 - unreachable address, a node that cannot start
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise FarmError(f"cannot connect to {where}: {type(err).__name__}: {err}") from err
    alive = [n for n in ray.nodes() if n.get("Alive")]
    resources = [n.get("Resources", {}) for n in alive]
    ctx = ray.get_runtime_context()
    gcs = getattr(ctx, "gcs_address", None) or address or "local"
    return Cluster(address=str(gcs), nodes=len(alive),
                   cpus=sum(r.get("CPU", 0) for r in resources),
                   max_memory=int(max((r.get("memory", 0) for r in resources), default=0)),
                   max_cpus=max((r.get("CPU", 0) for r in resources), default=0),
                   started=started, owned=owned)


def _probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse a host:port nothing listens on at once (ray.init would wait minutes for it)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// client addresses: left to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise FarmError(f"cannot connect to the Ray cluster at {address}: {err}") from err


def disconnect(cluster: Cluster) -> None:
    """Leave the cluster (which stops the local instance this process started), unless it is
    the caller's own session."""
    import ray

    if cluster.owned and ray.is_initialized():
        ray.shutdown()


def unschedulable(cluster: Cluster, peak_bytes: int, cpus: int) -> str | None:
    """Why no node of the cluster can ever run a cell, or None."""
    if peak_bytes > cluster.max_memory:
        return (f"its compile needs {peak_bytes / GIB:.2f} GiB of memory (compile_peak_bytes), "
                f"more than any node of the cluster has (largest: "
                f"{cluster.max_memory / GIB:.2f} GiB of {cluster.nodes} node(s))")
    if cpus > cluster.max_cpus:
        return (f"it asks for {cpus} CPUs, more than any node of the cluster has (largest: "
                f"{cluster.max_cpus:g})")
    return None


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


@dataclass
class _Running:
    request: CellRequest
    peak_bytes: int
    submitted: float
    started: float | None = None


def run_cells(requests: list[tuple[CellRequest, int]], cpus: int, jobs: int | None,
              on_finish: Callable[[CellRequest, dict[str, Any]], None]) -> None:
    """Run every cell as a Ray task and call `on_finish(request, outcome)` as each ends.

    Args:
        requests: (request, declared peak bytes) per cell, in the order to submit them.
        cpus: CPUs each task asks for.
        jobs: at most this many cells submitted at once (None: as many as Ray schedules).

    A task that dies (its worker crashed or was killed) gives a "crash" outcome with Ray's
    error. Ctrl-C cancels the tasks still running and is raised again.
    """
    import ray
    from ray.exceptions import RayError

    remote = ray.remote(max_calls=1)(cell_events)
    options = {"num_cpus": cpus, "max_retries": 0, "runtime_env": {"env_vars": _env()}}
    pending = deque(requests)
    running: dict[Any, _Running] = {}

    def finish(gen: Any, outcome: dict[str, Any]) -> None:
        state = running.pop(gen)
        on_finish(state.request, outcome)

    try:
        while pending or running:
            while pending and (jobs is None or len(running) < jobs):
                req, peak = pending.popleft()
                gen = remote.options(memory=peak, **options).remote(req)
                running[gen] = _Running(req, peak, time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1)
            for gen in ready:
                state = running[gen]
                try:
                    event = ray.get(next(gen))
                except StopIteration:
                    finish(gen, {"status": "failed", "failure": {
                        "kind": "crash", "reason": "the task ended without an outcome"}})
                    continue
                except RayError as err:  # the worker died, was killed (OOM), or the node went
                    finish(gen, {"status": "failed", "failure": {
                        "kind": "crash", "reason": f"{type(err).__name__}: {err}"}})
                    continue
                if event.get("event") == "started":
                    state.started = time.monotonic()
                    _log.info(f"▶ {state.request.cell_id}: started on {event.get('node')} "
                              f"(declared {state.peak_bytes / GIB:.2f} GiB)")
                else:
                    finish(gen, event)
    except BaseException:  # Ctrl-C, SIGTERM: what runs is cancelled; the caller reports
        for gen in running:
            try:
                ray.cancel(gen, force=True)
            except Exception:  # noqa: BLE001 - cancelling what may have ended already
                pass
        raise
