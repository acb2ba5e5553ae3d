"""`omnic presets list [KIND]` and `omnic presets show NAME` (torch-free)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("presets", help="list presets, or show one")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list presets (device, model, quantization)")
    ls.add_argument("kind", nargs="?", choices=["device", "model", "quantization"],
                    help="only this kind")
    ls.set_defaults(func=run_list)
    show = sub.add_parser("show", help="print one preset file, comments and sources included")
    show.add_argument("name", metavar="NAME", help="preset name, or KIND/NAME when ambiguous")
    show.set_defaults(func=run_show)


def _summary(path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.lstrip("# ").startswith("source:"):
            return line.lstrip("# ").strip()
    return ""


def run_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from omnic.presets import store

    table = Table(title="presets", title_justify="left")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("summary")
    for kind in store.KINDS:
        if args.kind and kind != args.kind:
            continue
        for name in store.names(kind):
            table.add_row(kind, name, _summary(store.path_of(kind, name)))
    Console().print(table)
    return 0


def run_show(args) -> int:
    from omnic.presets import store

    kind_given, _, name = args.name.rpartition("/")
    kinds = [kind_given] if kind_given else list(store.KINDS)
    if kind_given and kind_given not in store.KINDS:
        print(f"unknown preset kind {kind_given!r}; one of {', '.join(store.KINDS)}",
              file=sys.stderr)
        return 2
    hits = [(k, store.path_of(k, name)) for k in kinds if name in store.names(k)]
    if not hits:
        import difflib

        every = [n for k in kinds for n in store.names(k)]
        close = difflib.get_close_matches(name, every, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        print(f"unknown preset {name!r}{hint} (see `omnic presets list`)", file=sys.stderr)
        return 2
    if len(hits) > 1:
        print(f"{name!r} is a preset of several kinds; "
              f"say {' or '.join(f'{k}/{name}' for k, _ in hits)}", file=sys.stderr)
        return 2
    kind, path = hits[0]
    print(f"# {kind} preset {name}: {path}")
    print(path.read_text(encoding="utf-8"), end="")
    return 0
