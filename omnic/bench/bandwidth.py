"""This machine's memory bandwidth: a streaming copy of a buffer much larger than the last-level
cache, the number decode speed is held against.

Convention (STREAM's "Copy" kernel): one pass over N bytes reads N and writes N, so it counts
2·N bytes; GB/s = 2·N / seconds / 1e9. The write-allocate read of the destination that a CPU
without non-temporal stores also performs is not counted, as in STREAM.
ref: https://www.cs.virginia.edu/stream/ref.html ("Counting bytes and FLOPS")

Token-by-token decoding is read-dominated, so read bandwidth is the closer limit in principle;
copy is the standard, reproducible measurement and is what the ceiling uses (stated in the
report). Several threads copy disjoint slices at once, because one core alone rarely saturates
the memory controller; numpy releases the GIL inside `copyto` for plain dtypes.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CONVENTION = ("STREAM Copy: 2 x buffer bytes (one read + one write) per pass / seconds, "
              "1 GB = 1e9 bytes; write-allocate traffic not counted")
MIN_BUFFER = 256 * 2**20  # with no cache size known, or a small cache, still far outside it
LLC_MULTIPLE = 4  # the buffer is at least this many times the last-level cache
MAX_BUFFER = 2 * 2**30  # src + dst = 4 GiB at most, whatever the cache claims


@dataclass(frozen=True)
class Bandwidth:
    """A bandwidth measurement (GB/s by `CONVENTION`)."""

    gbps: float  # median over the timed passes
    samples_gbps: list[float] = field(default_factory=list)
    buffer_bytes: int = 0  # size of the source buffer (the destination is as large)
    llc_bytes: int | None = None
    threads: int = 1
    convention: str = CONVENTION

    def to_dict(self) -> dict:
        return asdict(self)


def last_level_cache_bytes() -> int | None:
    """Size of the largest data/unified CPU cache (Linux sysfs), or None when unknown."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    best: tuple[int, int] | None = None
    for index in sorted(root.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            size = _parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if best is None or (level, size) > best:
            best = (level, size)
    return best[1] if best else None


def _parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def default_buffer_bytes(llc: int | None) -> int:
    """LLC_MULTIPLE x the last-level cache, at least MIN_BUFFER, at most MAX_BUFFER."""
    want = LLC_MULTIPLE * llc if llc else MIN_BUFFER
    return int(min(MAX_BUFFER, max(MIN_BUFFER, want)))


def measure_bandwidth(nbytes: int | None = None, threads: int = 1, repeat: int = 5) -> Bandwidth:
    """Streaming-copy bandwidth of this machine.

    Args:
        nbytes: source buffer size (default: `default_buffer_bytes`); rounded down to 4 KiB
            per thread.
        threads: threads copying disjoint slices at the same time.
        repeat: timed passes after one untimed pass (which also faults every page in).

    Returns:
        Bandwidth with the median and every sample, in GB/s by `CONVENTION`.
    """
    threads = max(1, int(threads))
    llc = last_level_cache_bytes()
    nbytes = int(nbytes or default_buffer_bytes(llc))
    chunk = max(4096, (nbytes // threads) // 4096 * 4096)
    nbytes = chunk * threads
    src = np.full(nbytes // 8, 1.0, dtype=np.float64)  # written: every page is resident
    dst = np.empty_like(src)
    per = chunk // 8
    slices = [slice(i * per, (i + 1) * per) for i in range(threads)]

    def one_pass() -> float:
        if threads == 1:
            start = time.perf_counter()
            np.copyto(dst, src)
            return time.perf_counter() - start
        barrier = threading.Barrier(threads + 1)
        done = threading.Barrier(threads + 1)

        def work(s: slice) -> None:
            barrier.wait()
            np.copyto(dst[s], src[s])
            done.wait()

        pool = [threading.Thread(target=work, args=(s,)) for s in slices]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        done.wait()
        seconds = time.perf_counter() - start
        for t in pool:
            t.join()
        return seconds

    one_pass()  # warm-up: page faults of dst, thread start-up
    samples = [2 * nbytes / one_pass() / 1e9 for _ in range(max(1, repeat))]
    return Bandwidth(gbps=statistics.median(samples), samples_gbps=samples, buffer_bytes=nbytes,
                     llc_bytes=llc, threads=threads)


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
