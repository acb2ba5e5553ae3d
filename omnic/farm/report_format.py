"""How the reports write numbers and name cells (shared by report.md and report.html)."""

from __future__ import annotations

from typing import Any


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.2f} MiB"
    return f"{n / 1024:,.1f} KiB"


def fmt_kld(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def fmt_fits(cell: dict[str, Any]) -> str:
    m = cell.get("memory") or {}
    if cell.get("fits") is None:
        return "-"
    used = fmt_bytes(m.get("total_bytes"))
    budget = fmt_bytes(m.get("budget_bytes"))
    return f"{'yes' if cell['fits'] else 'NO'} ({used} of {budget})"


def label(cell: dict[str, Any]) -> str:
    """spec · device · quantization, as a reader names the cell."""
    return " · ".join([cell["spec"], cell["device"] or "(spec's device)",
                       cell["quantization"] or "(spec's quantization)"])


def rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target built (one empty row for a cell that built nothing)."""
    out = [{"target": t, **r} for t, r in cell["per_target"].items()]
    return out or [{"target": None}]


def status_text(cell: dict[str, Any]) -> str:
    f = cell["failure"]
    return "passed" if f is None else f"failed ({f['kind']})"
