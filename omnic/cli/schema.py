"""`omnic schema [NAME]` — print a JSON Schema (default: the spec's)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("schema", help="print the JSON Schema of specs (or of manifests, "
                              "farm matrices)")
    p.add_argument("name", nargs="?", default="omnic-spec",
                   help="schema name: omnic-spec (default), omnic-manifest or omnic-farm")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from omnic.tools.write_schemas import available, render

    names = available()
    if args.name not in names:
        print(f"unknown schema {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    print(render(args.name), end="")
    return 0
