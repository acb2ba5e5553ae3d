"""`omnic compile SPEC -o OUT_DIR [--targets onnx,gguf] [--dump-dir D] [--force]`.

Exit status: 0 every golden check passed (not_run is reported, not failed); 1 a golden check
failed (the build is kept at OUT_DIR.failed) or a stage crashed; 2 invalid spec or input.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compile", help="spec -> verified artifacts for every target + manifest",
        description="Compile a spec: validate, plan, build, lower to every target, run each "
        "artifact on its runtime against the PyTorch reference, write OUT_DIR/manifest.json. "
        "Exit 0 when every golden check passed, 1 when one failed (the build is then kept at "
        "OUT_DIR.failed and OUT_DIR is left untouched), 2 for an invalid spec or input.",
    )
    p.add_argument("spec", metavar="SPEC", help="spec YAML")
    p.add_argument("-o", "--out", dest="out_dir", required=True, metavar="OUT_DIR",
                   help="build directory to create")
    p.add_argument("--targets", help="comma-separated target ids (default: all in the spec)")
    p.add_argument("--dump-dir", metavar="D", help="write every stage's intermediate result here")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="lower and check up to N targets at once in worker processes, as far "
                   "as the machine's free memory allows (default 1)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="D",
                       help="the build cache folder (default: $OMNIC_CACHE_DIR, else "
                       "~/.cache/omnic/builds); targets whose inputs are unchanged are reused")
    cache.add_argument("--no-cache", action="store_true",
                       help="build everything, reading and writing no build cache")
    # tests plant faults with it (omnic.passes.faults); not for users, so not in --help
    p.add_argument("--append-pass", action="append", default=[], metavar="PASS_ID",
                   help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from omnic.cli.inspect import print_summary
    from omnic.compiler.pipeline import CompileError, compile

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    err_console = Console(stderr=True, highlight=False)
    try:
        result = compile(args.spec, args.out_dir, targets=targets, dump_dir=args.dump_dir,
                         force=args.force, progress=not args.quiet,
                         extra_passes=args.append_pass,
                         cache=False if args.no_cache else args.cache_dir, jobs=args.jobs)
    except CompileError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return err.exit_code
    print_summary(result.manifest, Console(stderr=True))
    not_run = [a for a in result.manifest.artifacts if a.golden.status == "not_run"]
    if not_run:
        err_console.print(f"[yellow]{len(not_run)} artifact(s) not run on this host[/]; "
                          f"`omnic verify {result.out_dir}` on a host that can run them")
    if result.exit_code:
        err_console.print(f"[bold red]golden check failed[/]: the build is kept at "
                          f"{escape(str(result.out_dir))} for inspection; {escape(args.out_dir)} "
                          "was not written")
    print(result.out_dir, file=sys.stdout)
    return result.exit_code
