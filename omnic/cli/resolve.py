"""`omnic resolve SPEC` — print the fully explicit spec: presets inlined, nothing left implicit."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("resolve",
                              help="print the spec with presets inlined, every value explicit")
    p.add_argument("spec", metavar="SPEC", help="spec YAML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import yaml

    from omnic.cli.validate import check, print_diagnostics

    result = check(args.spec)
    print_diagnostics(result)
    if result.resolved is None:
        return 2
    data = result.resolved.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"# {args.spec}, resolved by omnic: every preset inlined, every default explicit")
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100), end="")
    return 0 if result.ok else 2
