"""`omnic farm MATRIX -o OUT [--address ADDR] [--cache-dir D] [--bench] [--jobs N]
[--cpus-per-cell N]`.

Compiles every cell of a matrix (specs x device presets x quantization presets) as one Ray task
each, on a local Ray instance or the cluster at --address, sharing the build cache, and writes
OUT/report.json, OUT/report.md and OUT/report.html; each cell's spec, build and compile log are
in OUT/cells/<cell id>/. Rerunning an interrupted farm resumes from the build cache.

Exit status: 0 every cell passed; 1 a cell failed (invalid once merged, too large for any node,
a golden check, a crash; the report says which and why); 2 the matrix file is invalid.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "farm", help="compile a matrix of specs x devices x quantizations on Ray, with a report",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("matrix", metavar="MATRIX", help="matrix YAML (specs, devices, quantization, "
                   "targets, overrides)")
    p.add_argument("-o", "--out", dest="out_dir", required=True, metavar="OUT",
                   help="output folder (reports, and cells/<cell id>/); reused by a rerun")
    p.add_argument("--address", metavar="ADDR",
                   help="an existing Ray cluster (host:port, or 'auto'); default: start a local "
                   "Ray instance")
    p.add_argument("--cache-dir", metavar="D",
                   help="the build cache every cell shares (default: omnic's, see `omnic cache`)")
    p.add_argument("--bench", action="store_true",
                   help="measure each build's decode tokens/s per target (as `omnic bench`)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="at most N cells at once (default: as many as the cluster's CPUs and "
                   "memory hold)")
    p.add_argument("--cpus-per-cell", type=int, default=1, metavar="N",
                   help="CPUs each cell's task asks Ray for, and the threads --bench uses "
                   "(default: 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from omnic.cli.validate import print_diagnostics
    from omnic.compiler.validate import Validation
    from omnic.farm import FarmSettings, MatrixError, run_farm

    err = Console(stderr=True, highlight=False)
    for name in ("jobs", "cpus_per_cell"):
        value = getattr(args, name)
        if value is not None and value < 1:
            err.print(f"[bold red]error:[/] --{name.replace('_', '-')} must be at least 1")
            return 2
    settings = FarmSettings(out_dir=Path(args.out_dir), address=args.address,
                            cache_dir=args.cache_dir, bench=args.bench, jobs=args.jobs,
                            cpus_per_cell=args.cpus_per_cell)
    try:
        result = run_farm(args.matrix, settings)
    except MatrixError as e:
        print_diagnostics(Validation(args.matrix, diagnostics=e.diagnostics))
        print(f"{args.matrix}: invalid matrix", file=sys.stderr)
        return 2
    s = result.report["summary"]
    style = "green" if result.passed else "bold red"
    err.print(f"[{style}]{s['passed']} of {s['cells']} cells passed[/]; report: "
              f"{escape(str(result.paths['html']))}")
    print(result.paths["json"])
    return 0 if result.passed else 1
