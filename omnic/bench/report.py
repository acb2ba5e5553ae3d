"""The bench report as a rich table (one row per artifact) and as JSON. No pass/fail."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.table import Table

MIB = 2**20


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def _stat(stat: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    """median ±half the range, as a percentage of the median."""
    if not stat:
        return "—"
    return f"{fmt.format(stat['median'])} ±{50 * stat['spread']:.0f}%"


def table(report: dict[str, Any]) -> Table:
    """The rows of `bench_build`'s report as a rich Table with a caption of the settings."""
    s, bw = report["settings"], report["bandwidth"]
    load = report["load_average"]
    title = (f"omnic bench — {report['name']}: {s['threads']} thread(s), prompt "
             f"{s['prompt_tokens']}, decode {s['decode_tokens']}, median of {s['repeat']} "
             f"after {s['warmup']} warm-up")
    caption = (f"bandwidth {bw['gbps']:.1f} GB/s ({bw['convention']}; "
               f"{bw['buffer_bytes'] / MIB:.0f} MiB buffer, {bw['threads']} thread(s)); "
               f"ceiling = bandwidth / bytes read per token; ±: half the min–max range. "
               f"Load average before {load['before']}, after {load['after']}.")
    notes: list[str] = []
    busy = loaded(report)
    if busy:
        caption += f" {busy}"
    t = Table(title=title, caption_justify="left")
    for name in ["target", "precision", "weights MiB", "load s", "TTFT ms", "prefill tok/s",
                 "decode tok/s", "ceiling tok/s", "of ceiling", "peak RSS MiB"]:
        left = name in ("target", "precision")
        t.add_column(name, justify="left" if left else "right", no_wrap=left, overflow="fold")
    for r in report["rows"]:
        name = r["target"]
        if r["status"] != "ok":
            notes.append(f"{name}: " + ("not run: " if r["status"] == "not_run" else "error: ")
                         + (r["reason"] or ""))
            name += f" [{len(notes)}]"
        elif r.get("fits_llc"):
            notes.append(f"{name}: the weights fit in the last-level cache, so the DRAM "
                         "ceiling does not bind")
            name += f" [{len(notes)}]"
        frac = r.get("fraction_of_ceiling")
        t.add_row(
            escape(name), r.get("precision") or "—",
            _num(r["weight_bytes"] / MIB if r.get("weight_bytes") else None),
            _num(r.get("load_s"), "{:.2f}"), _stat(r.get("ttft_ms")),
            _stat(r.get("prefill_tokens_per_s")), _stat(r.get("decode_tokens_per_s")),
            _num(r.get("ceiling_tokens_per_s"), "{:.0f}"),
            "—" if frac is None else f"{100 * frac:.0f}%",
            _num(r.get("peak_rss_mb"), "{:.0f}"),
        )
    lines = [caption] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    t.caption = "\n".join(escape(line) for line in lines)
    return t


def loaded(report: dict[str, Any]) -> str | None:
    """A warning when other processes competed for the CPUs during the measurement.

    The 1-minute load average counts runnable threads; when it exceeds the CPUs left free by
    the measured runtime's threads, time slices were shared and every speed is a lower bound.
    Spin-waiting runtimes suffer most: llama.cpp's thread barrier measured 2.6 tok/s at load 3.8
    on 2 CPUs for a model that decodes 512 tok/s on a quiet moment of the same machine.
    """
    cpus = (report.get("host") or {}).get("cpus")
    load = report.get("load_average") or {}
    worst = max((v[0] for v in (load.get("before"), load.get("after")) if v), default=None)
    if not cpus or worst is None or worst <= cpus:
        return None
    return (f"WARNING: load average {worst:.1f} on {cpus} CPUs: other processes shared them "
            "during the measurement; the speeds are lower bounds (measure on a quiet machine).")


def dumps(report: dict[str, Any]) -> str:
    """The report as indented JSON (worker tracebacks included, for debugging)."""
    return json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
