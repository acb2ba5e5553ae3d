"""`omnic bench OUT_DIR [--targets onnx,gguf] [--threads N] [--prompt-tokens P]
[--decode-tokens D] [--repeat R] [--json FILE]`.

Measures every decoder artifact of a build on its runtime, each in a fresh process: load time,
time to first token, prefill and decode tokens/s (median and spread of R runs after a warm-up),
peak resident memory; and this machine's copy bandwidth, against which each decode speed is shown
as a fraction of the ceiling bandwidth / bytes read per token. No pass/fail.

Every artifact measured must still have the sha256 the manifest records (`--no-verify` skips
the check).

Exit status: 0 measured (artifacts that cannot run here are reported, not failed); 1 a runtime
crashed on an artifact (the row says how); 2 bad input, or an artifact modified since the
compile.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="runtime speed of every artifact against the memory-bandwidth ceiling",
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
    )
    p.add_argument("build_dir", metavar="OUT_DIR", help="a build directory (with manifest.json)")
    p.add_argument("--targets", help="comma-separated target ids (default: every artifact of the "
                   "build); 'reference' is the PyTorch fp32 reference")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for every runtime and the bandwidth test (default: all CPUs)")
    p.add_argument("--prompt-tokens", type=int, default=64, metavar="P", help="prefill length")
    p.add_argument("--decode-tokens", type=int, default=32, metavar="D", help="greedy steps")
    p.add_argument("--repeat", type=int, default=5, metavar="R", help="timed runs per artifact")
    p.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed runs first")
    p.add_argument("--bandwidth-mb", type=int, metavar="MB",
                   help="copy buffer size (default: 4x the last-level cache, at least 256 MiB)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="measure artifacts even when their sha256 is not the one in the manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from rich.console import Console
    from rich.markup import escape

    from omnic.bench import BenchError, BenchSettings, bench_build
    from omnic.bench import report as rp

    err = Console(stderr=True, highlight=False)
    targets = (tuple(t.strip() for t in args.targets.split(",") if t.strip())
               if args.targets else None)
    settings = BenchSettings(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                             repeat=args.repeat, warmup=args.warmup, targets=targets,
                             bandwidth_bytes=(args.bandwidth_mb * 2**20
                                              if args.bandwidth_mb else None))
    if args.threads is not None:
        if args.threads < 1:
            err.print("[bold red]error:[/] --threads must be at least 1")
            return 2
        from dataclasses import replace

        settings = replace(settings, threads=args.threads)
    try:
        report = bench_build(args.build_dir, settings,
                             log=lambda line: err.print(f"bench: {escape(line)}"),
                             verify=args.verify)
    # BenchError includes an artifact modified since the compile: a build this command cannot
    # use is bad input (2), as a missing manifest is; 1 is for a runtime that crashed measuring
    except BenchError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    to_stdout = args.json == "-"
    out = err if to_stdout else Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 132)  # a pipe or file: do not squeeze the table to 80 columns
    out.print(rp.table(report))
    if args.json:
        text = rp.dumps(report)
        if to_stdout:
            sys.stdout.write(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text)
    return 1 if any(r["status"] == "error" for r in report["rows"]) else 0
