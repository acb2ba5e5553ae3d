"""`omnic inspect OUT_DIR [--json]` — summarise one build from its manifest.

Also home of the artifact table that `omnic compile` and `omnic verify` print.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from omnic.compiler.manifest import Manifest

_STATUS_STYLE = {"passed": "green", "failed": "bold red", "not_run": "yellow"}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def key_metrics(metrics: dict) -> str:
    """The few numbers a reader looks at first."""
    parts = []
    for name, fmt in (("nmse", "{:.1e}"), ("max_abs", "{:.1e}"), ("kld", "{:.2g}"),
                      ("top1_fp32", "{:.0%}"), ("greedy_match", "{:.0%}")):
        value = metrics.get(name)
        if value is not None:
            parts.append(f"{name} " + fmt.format(value))
    return " · ".join(parts)


def artifact_table(manifest: "Manifest", title: str | None = None) -> "Table":
    from rich.table import Table

    table = Table(title=title or f"{manifest.name}: {manifest.status}", title_justify="left")
    for col in ("target", "component", "file", "size", "precision", "golden", "key metrics"):
        table.add_column(col, overflow="fold")
    cached = cached_targets(manifest)
    for a in manifest.artifacts:
        style = _STATUS_STYLE.get(a.golden.status, "")
        golden = f"[{style}]{a.golden.status}[/]" + (" [dim](cached)[/]" if a.target in cached
                                                     else "")
        table.add_row(a.target, a.component, a.path, human_bytes(a.bytes), a.precision, golden,
                      key_metrics(a.golden.metrics))
    return table


def cached_targets(manifest: "Manifest") -> set[str]:
    """Targets this build took from the build cache (their timing stage `<target>: cached`)."""
    from omnic.compiler.cache import CACHED

    return {t.stage.rsplit(":", 1)[0] for t in manifest.timings.targets
            if t.stage.endswith(f": {CACHED}")}


def print_reasons(manifest: "Manifest", console) -> None:
    """Why each artifact failed or was not run, one full line each (tables would fold them)."""
    from rich.markup import escape

    for a in manifest.artifacts:
        if a.golden.status != "passed":
            style = _STATUS_STYLE.get(a.golden.status, "")
            console.print(f"[{style}]{a.golden.status}[/] {a.target} {a.component} {a.path}: "
                          f"{escape(a.golden.reason or '')}", soft_wrap=True)


def print_summary(manifest: "Manifest", console=None) -> None:
    """Artifact table, plan against actual, passes and timings."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    console.print(artifact_table(manifest))
    print_reasons(manifest, console)
    if manifest.test_fault:
        console.print(f"[bold red]built with test fault {manifest.test_fault}[/]")
    plan = Table(title="plan vs actual", title_justify="left")
    for col in ("target", "file", "planned", "actual", "ratio", "within"):
        plan.add_column(col)
    for p in manifest.plan_vs_actual:
        # basis "target": the target's byte model, compiled code (excluded_bytes) left out
        actual = human_bytes(p.compared_bytes if p.compared_bytes is not None else p.actual_bytes)
        if p.excluded_bytes:
            actual += f" (+{human_bytes(p.excluded_bytes)} code)"
        within = "-" if p.within_tolerance is None else (
            f"[green]±{p.tolerance:.0%}[/]" if p.within_tolerance
            else f"[red]no (±{p.tolerance:.0%})[/]")
        plan.add_row(p.target, p.path, human_bytes(p.planned_bytes) + ("" if p.basis == "target"
                     else " (weights)"), actual, f"{p.ratio:.3f}" if p.ratio is not None else "-",
                     within)
    console.print(plan)
    if manifest.quantization_auto:  # quantization: auto (omnic.compiler.auto_quant)
        qa = manifest.quantization_auto
        console.print(f"quantization auto -> [b]{qa['chosen']}[/]: {escape(qa['reason'])}",
                      soft_wrap=True)
    passes = ", ".join(f"{p.id} ({'changed' if p.changed else 'unchanged'})"
                       for p in manifest.passes)
    console.print(f"passes: {passes}")
    t = manifest.timings
    slow = sorted(t.stages + t.targets, key=lambda s: -s.seconds)[:4]
    console.print(f"time: {t.total_seconds:.1f}s (" + ", ".join(
        f"{s.stage} {s.seconds:.1f}s" for s in slow) + ")")


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="summarise one build",
                              description="Summarise a build directory (or manifest file).")
    p.add_argument("build", metavar="OUT_DIR", help="build directory or manifest.json")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from pydantic import ValidationError

    from omnic.compiler import manifest as mf

    path = mf.manifest_path(Path(args.build))
    try:
        manifest = mf.load(path)
    except FileNotFoundError:
        print(f"{path}: no such manifest", file=sys.stderr)
        return 2
    except (ValidationError, ValueError) as err:
        print(f"{path}: not a valid omnic manifest: {err}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(mf.dumps(manifest))
        return 0
    from rich.console import Console

    console = Console()
    console.print(f"[bold]{manifest.name}[/] omnic {manifest.omnic_version} · spec "
                  f"{manifest.spec_sha256[:12]} · targets {', '.join(manifest.targets)}")
    print_summary(manifest, console)
    return 0
