"""`omnic plan SPEC [--json] [--explain-quant [--tensor NAME]]` — the memory plan of a spec
against its device, each target's predicted artifact bytes, and (with --explain-quant) what every
tensor becomes in every enabled backend. Torch-free."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="memory plan: weights, KV cache, activations vs "
                              "device budget")
    p.add_argument("spec", metavar="SPEC", help="spec YAML file")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--explain-quant", action="store_true",
                   help="per tensor: the rule that chose its scheme and its form in each target")
    p.add_argument("--tensor", metavar="NAME", action="append",
                   help="with --explain-quant: one line for this tensor (repeatable)")
    p.set_defaults(func=run)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):,.1f}"


def render(plan, title: str) -> None:
    """Print the plan as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    weights = Table(title=title, title_justify="left")
    for col, justify in (("component", "left"), ("storage", "left"), ("tensors", "right"),
                         ("parameters", "right"), ("MiB", "right")):
        weights.add_column(col, justify=justify)
    for w in plan.weights:
        weights.add_row(w.component, w.storage, str(w.tensors), f"{w.parameters:,}", _mib(w.bytes))
    weights.add_row("[b]all weights", "", "", f"[b]{plan.parameters:,}",
                    f"[b]{_mib(plan.weight_bytes)}")
    console.print(weights)

    if plan.layers:
        console.print(_layers_table(plan))

    total = Table(title=f"against {plan.device}", title_justify="left")
    total.add_column("item")
    total.add_column("MiB", justify="right")
    total.add_row("weights", _mib(plan.weight_bytes))
    per_target = ", ".join(f"{t} {_mib(n)}" for t, n in plan.kv_cache_per_target.items())
    total.add_row(f"KV cache ({plan.kv_cache}{'; ' + per_target if per_target else ''})",
                  _mib(plan.kv_cache_bytes))
    total.add_row("activations (prefill, est.)", _mib(plan.activation_bytes))
    total.add_row("runtime overhead (est.)", _mib(plan.runtime_overhead_bytes))
    total.add_row("[b]total", f"[b]{_mib(plan.total_bytes)}")
    total.add_row("device budget", _mib(plan.budget_bytes))
    style = "green" if plan.fits else "red"
    total.add_row(f"[{style}]headroom", f"[{style}]{_mib(plan.headroom_bytes)}")
    console.print(total)
    console.print(
        f"decode ceiling at {plan.bandwidth_gbps:g} GB/s: "
        f"{plan.decode_tokens_per_s_empty:,.1f} tok/s (empty context, "
        f"{_mib(plan.decode_bytes_per_token_empty)} MiB/token), "
        f"{plan.decode_tokens_per_s_full:,.1f} tok/s (full context, "
        f"{_mib(plan.decode_bytes_per_token_full)} MiB/token)"
    )
    for note in plan.notes:
        console.print(f"note: {note}")
    if plan.artifacts:
        render_artifacts(plan.artifacts, console)


def _layers_table(plan):
    """The per-layer table (runs of equal rows) with each target's KV positions per layer."""
    from rich.table import Table

    targets = list(plan.kv_cache_per_target)
    table = Table(title="layers (the per-layer table; KV positions each target allocates per "
                  "layer)", title_justify="left")
    for col in ("layers", "attention", "RoPE", *targets):
        table.add_column(col, justify="right" if col in targets else "left")
    for run in plan.layers:
        kind = run["attention"] + (f" (window {run['window']})" if run["window"] else "")
        table.add_row(run["layers"], kind, run["rope"],
                      *(f"{run['kv_positions'][t]:,}" for t in targets))
    return table


def render_artifacts(artifacts: list[dict], console) -> None:
    """Each target's predicted artifact, line by line (omnic.targets.footprint)."""
    from rich.table import Table

    table = Table(title="artifacts (predicted bytes per target)", title_justify="left")
    for col, justify in (("target", "left"), ("MiB", "right"), ("of which", "left")):
        table.add_column(col, justify=justify)
    for a in artifacts:
        if not a["carried"]:
            table.add_row(a["target"], "-", f"[yellow]cannot carry: {a['reason']}")
            continue
        parts = ", ".join(f"{k} {_mib(v)}" for k, v in a["lines"].items())
        if a["excluded"]:
            parts += f"; not counted: compiled code ({', '.join(a['excluded'])})"
        table.add_row(a["target"], _mib(a["bytes"]), parts)
    console.print(table)


def run(args) -> int:
    from omnic.cli.validate import check, print_diagnostics

    result = check(args.spec)
    if result.plan is None:  # the spec did not resolve: nothing to plan
        print_diagnostics(result)
        return 2
    from pathlib import Path

    from omnic.compiler.plan import plan_memory

    plan = plan_memory(result.resolved, artifacts=True, spec_dir=str(Path(args.spec).parent))
    auto_note = None
    if result.spec is not None and result.spec.quantization == "auto":
        from omnic.compiler.auto_quant import placeholder

        _, name = placeholder(result.resolved)
        auto_note = (f"quantization: auto (decided at compile); planned with {name}, the largest "
                     "preset that fits and every target carries (compile may keep a few "
                     "int4 matrices at int8, within the budget)")
        plan.notes.append(auto_note)
    if args.explain_quant:
        from omnic.targets.explain import explain, one_line, render as render_quant

        ex = explain(result.resolved)
        if args.json:
            print(json.dumps(ex.to_dict(), indent=2))
        elif args.tensor:
            for name in args.tensor:
                try:
                    print(one_line(ex, name))
                except KeyError:
                    print(f"{name}: no such tensor (names look like layers.0.attn.q.weight)")
                    return 2
        else:
            render_quant(ex)
    elif args.json:
        data = plan.to_dict()
        if auto_note:
            data["quantization"] = "auto (decided at compile)"
        print(json.dumps(data, indent=2))
    else:
        render(plan, f"{args.spec}: {result.resolved.name}")
    print_diagnostics(result)
    return 0 if result.ok else 2
