"""`omnic diff OLD NEW [--json] [--fail-on RULES]` — what changed between two builds.

OLD and NEW are build directories or manifest files. Exit status 0, or 1 when a --fail-on rule
is broken (for CI), 2 when an input cannot be read or a rule cannot be parsed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diff", help="compare two builds (or manifests); optionally fail on regressions",
        description="Explain what changed between two builds: spec fields, toolchain, passes, "
        "artifacts added/removed, and per artifact size, hash, ops, quantization and golden "
        "metrics. Rules such as size:+5%%,kld:+0.01,golden:failed exit 1 when broken.",
    )
    p.add_argument("old", metavar="OLD", help="build directory or manifest.json")
    p.add_argument("new", metavar="NEW", help="build directory or manifest.json")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.add_argument("--fail-on", metavar="RULES", default="",
                   help="comma-separated rules: size:+5%%, kld:+0.01, top1:-0.02, "
                   "golden:failed|not_run|regressed, hash:changed, ops:changed, "
                   "artifacts:added|removed, spec:changed")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _print(d, broken: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if d.identical:
        console.print("[green]identical[/] (apart from timings)")
    if d.status[0] != d.status[1]:
        console.print(f"status: {d.status[0]} -> {d.status[1]}")
    for title, changes in (("spec", d.spec), ("toolchain", d.toolchain), ("passes", d.passes)):
        if changes:
            t = Table(title=f"{title} changes", title_justify="left")
            for col in ("field", "old", "new"):
                t.add_column(col, overflow="fold")
            for c in changes:
                t.add_row(escape(c.path), escape(_fmt(c.old)), escape(_fmt(c.new)))
            console.print(t)
    t = Table(title="artifacts", title_justify="left")
    for col in ("target", "component", "file", "status", "size", "hash", "what changed"):
        t.add_column(col, overflow="fold")
    for a in d.artifacts:
        size = "-" if a.status in ("added", "removed") else "same"
        if a.bytes:
            delta, rel = a.size_delta
            size = f"{a.bytes[0]} -> {a.bytes[1]} ({delta:+d}" + (f", {rel:+.1%})" if rel
                                                                  is not None else ")")
        what = []
        if a.old_path:
            what.append(f"renamed from {a.old_path}")
        if a.precision:
            what.append(f"precision {a.precision[0]} -> {a.precision[1]}")
        if a.golden_status:
            what.append(f"golden {a.golden_status[0]} -> {a.golden_status[1]}")
        what += [f"{m} {_fmt(o)} -> {_fmt(n)}" for m, (o, n) in a.metrics.items()]
        what += [f"op {k} {o} -> {n}" for k, (o, n) in list(a.op_histogram.items())[:6]]
        what += [f"quantization.{c.path} {_fmt(c.old)} -> {_fmt(c.new)}" for c in a.quantization]
        hash_cell = "changed" if a.sha256_changed else ("-" if a.status in ("added", "removed")
                                                        else "same")
        style = {"added": "green", "removed": "red", "changed": "yellow"}.get(a.status, "dim")
        t.add_row(a.target, a.component, a.path, f"[{style}]{a.status}[/]", size, hash_cell,
                  escape("\n".join(what)))
    console.print(t)
    for b in broken:
        console.print(f"[bold red]rule broken:[/] {escape(b)}")


def run(args) -> int:
    from pydantic import ValidationError

    from omnic.compiler import manifest as mf
    from omnic.compiler.diff import RuleError, broken_rules, diff_manifests, parse_rules

    try:
        rules = parse_rules(args.fail_on)
    except RuleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = []
    for path in (args.old, args.new):
        p = mf.manifest_path(Path(path))
        try:
            loaded.append(mf.load(p))
        except FileNotFoundError:
            print(f"error: {p}: no such manifest", file=sys.stderr)
            return 2
        except (ValidationError, ValueError) as err:
            print(f"error: {p}: not a valid omnic manifest: {err}", file=sys.stderr)
            return 2
    old, new = loaded
    d = diff_manifests(old, new)
    broken = broken_rules(d, new, rules)
    if args.json:
        out = d.to_json()
        out["identical"] = d.identical
        out["broken_rules"] = broken
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        _print(d, broken)
    return 1 if broken else 0
