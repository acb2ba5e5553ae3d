"""`omnic golden update [SPEC...]` — (re)write golden/<spec>/ for the example specs.

golden/ is written only by this tool (never by hand). Without SPEC arguments every specs/*.yaml
is updated. Review the diff of golden/ like code: a change there means the numbers moved.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def register(subparsers) -> None:
    p = subparsers.add_parser("golden", help="golden/ maintenance (update)",
                              description="Maintain the repository's golden/ directory.")
    sub = p.add_subparsers(dest="golden_command", metavar="ACTION", required=True)
    u = sub.add_parser("update", help="recompute golden/<spec>/ inputs and expected outputs")
    u.add_argument("specs", nargs="*", metavar="SPEC", help="spec files (default: specs/*.yaml)")
    u.add_argument("--golden-dir", default=str(REPO / "golden"), help="default: <repo>/golden")
    u.set_defaults(func=run_update)


def run_update(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from omnic.compiler.validate import load_resolved
    from omnic.golden.summary import write
    from omnic.spec.load import SpecError

    console = Console(stderr=True)
    specs = [Path(s) for s in args.specs] or sorted((REPO / "specs").glob("*.yaml"))
    if not specs:
        print("error: no spec files", file=sys.stderr)
        return 2
    status = 0
    for spec in specs:
        try:
            with console.status(f"golden: {spec}"):
                out = write(Path(args.golden_dir), spec, load_resolved(spec))
        except (SpecError, FileNotFoundError) as err:
            console.print(f"[red]error:[/] {escape(str(spec))}: {escape(str(err))}")
            status = 2
            continue
        console.print(f"[green]✓[/] {spec} -> {out}")
    return status
