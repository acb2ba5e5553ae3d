"""`omnic cache ls | prune --max-size SIZE` — the build cache (omnic.compiler.cache).

    omnic cache ls [--cache-dir D] [--json]     every entry, most recently used first
    omnic cache prune --max-size 10G            remove the least recently used entries beyond it
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="the build cache: list, prune",
                              description="List or prune the build cache that `omnic compile` "
                              "reuses targets from.")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="list the entries, most recently used first")
    ls.add_argument("--json", action="store_true", help="print JSON")
    prune = sub.add_parser("prune", help="remove least recently used entries beyond a size")
    prune.add_argument("--max-size", required=True, metavar="SIZE",
                       help="what the cache may keep, e.g. 10G, 500M, 0 (everything goes)")
    for q in (ls, prune):
        q.add_argument("--cache-dir", metavar="D",
                       help="the cache folder (default: $OMNIC_CACHE_DIR, else "
                       "~/.cache/omnic/builds)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from omnic.cli.inspect import human_bytes
    from omnic.compiler.cache import BuildCache, default_root
    from omnic.compiler.compile_cost import parse_size

    console, err = Console(), Console(stderr=True)
    root = args.cache_dir or default_root()
    if root is None:
        err.print("[bold red]error:[/] the build cache is off (OMNIC_CACHE=off); name a "
                  "folder with --cache-dir")
        return 2
    cache = BuildCache(root)
    if args.cache_command == "prune":
        try:
            limit = parse_size(args.max_size, "--max-size")
        except ValueError as e:
            err.print(f"[bold red]error:[/] {e}")
            return 2
        removed = cache.prune(limit)
        kept = cache.entries()
        freed, held = (human_bytes(sum(e.bytes for e in es)) for es in (removed, kept))
        console.print(f"removed {len(removed)} entries ({freed}); {len(kept)} kept ({held}) "
                      f"in {root}")
        return 0
    entries = cache.entries()
    if args.json:
        print(json.dumps({"root": str(root), "entries": [asdict(e) for e in entries]}, indent=2))
        return 0
    table = Table(title=f"build cache {root}", title_justify="left")
    for col in ("key", "kind", "spec", "target", "size", "created", "last used"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.key[:12], e.kind, str(e.label.get("spec", "")),
                      str(e.label.get("target", "")), human_bytes(e.bytes), _when(e.created),
                      _when(e.used))
    console.print(table)
    console.print(f"{len(entries)} entries, {human_bytes(sum(e.bytes for e in entries))}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
