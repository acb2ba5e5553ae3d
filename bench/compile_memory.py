"""The compiler's own cost on one spec: wall time and peak RSS per stage and per target, against
the fp32 weight bytes, with an RSS timeline sampled from outside the compile.

    PYTHONPATH=. .venv/bin/python bench/compile_memory.py specs/llama3_1b.yaml \
        -o /tmp/omnic_bench/llama3_1b [--min-available-gb 2] [--csv rss.csv]

`omnic compile` runs as a child process. Every 0.25 s this script records the child's RSS and
the machine's MemAvailable; if MemAvailable falls below --min-available-gb the compile is
stopped (a shared machine must not be pushed into the OOM killer). At the end it prints the
manifest's `timings` (each stage's own peak RSS: the pipeline resets the high-water mark at every
stage start) as multiples of the fp32 weight bytes, and the overall peak seen from outside.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


def _meminfo_mb(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fp32_weight_bytes(spec: Path) -> int:
    from omnic.spec.inventory import parameter_count
    from omnic.compiler.validate import load_resolved

    return 4 * parameter_count(load_resolved(spec).model)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--targets", help="passed to omnic compile")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-available-gb", type=float, default=2.0)
    p.add_argument("--csv", type=Path, help="write the RSS timeline (seconds, rss MiB, avail MiB)")
    a = p.parse_args()
    weights = fp32_weight_bytes(a.spec)
    cmd = [h.PY, "-m", "omnic.cli.main", "compile", str(a.spec), "-o", str(a.out), "--force"]
    if a.targets:
        cmd += ["--targets", a.targets]
    print(f"load average at start: {h.load_average()}; MemAvailable "
          f"{_meminfo_mb('MemAvailable') / 1024:.1f} GiB; fp32 weights {weights:,} bytes",
          file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=h.thread_env(a.threads))
    samples: list[tuple[float, float, float]] = []
    stopped = threading.Event()
    killed = []

    def watch() -> None:
        while not stopped.is_set():
            rss, avail = _status_mb(proc.pid, "VmRSS"), _meminfo_mb("MemAvailable")
            if rss is not None:
                samples.append((time.perf_counter() - start, rss, avail))
            if avail < a.min_available_gb * 1024 and proc.poll() is None:
                killed.append(avail)
                proc.send_signal(signal.SIGTERM)
            stopped.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = proc.wait()
    stopped.set()
    watcher.join()
    seconds = time.perf_counter() - start
    if a.csv:
        a.csv.write_text("seconds,rss_mb,available_mb\n" + "".join(
            f"{t:.2f},{r:.1f},{m:.1f}\n" for t, r, m in samples))
    if killed:
        print(f"stopped: MemAvailable fell to {killed[0]:.0f} MiB", file=sys.stderr)
    peak = max((r for _, r, _ in samples), default=float("nan"))
    build = a.out
    if not (build / "manifest.json").is_file():
        build = a.out.with_name(a.out.name + ".failed")
    rows = []
    if (build / "manifest.json").is_file():
        t = json.loads((build / "manifest.json").read_text())["timings"]
        for s in t["stages"] + t["targets"]:
            mb = s.get("peak_rss_mb")
            rows.append([s["stage"], f"{s['seconds']:.1f}", None if mb is None else f"{mb:.0f}",
                         None if mb is None else f"{mb * 2**20 / weights:.2f}"])
        rows.append(["total", f"{t['total_seconds']:.1f}",
                     f"{t.get('peak_rss_mb') or 0:.0f}",
                     f"{(t.get('peak_rss_mb') or 0) * 2**20 / weights:.2f}"])
    h.print_table(f"omnic compile {a.spec.name}: time and peak RSS per stage",
                  ["stage", "seconds", "peak RSS MiB", "x fp32 weights"], rows,
                  [f"exit status {code}; wall {seconds:.0f} s; peak RSS sampled from outside "
                   f"{peak:.0f} MiB = {peak * 2**20 / weights:.2f} x the fp32 weights "
                   f"({weights / 2**20:.0f} MiB); {a.threads} threads",
                   f"load average at end: {h.load_average()}"])
    return code


if __name__ == "__main__":
    sys.exit(main())
