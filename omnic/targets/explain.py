"""`omnic plan SPEC --explain-quant`: every tensor's scheme, why, and what each backend makes of it.

For each decoder tensor: the rule that chose its scheme (an override, by index and match, or the
default; norms and biases always stay fp32) and its native form in every enabled target, read
from `omnic.targets.fates` (the functions the targets lower with). Consecutive layers whose tensor
has the same fate everywhere collapse into one row (`layers.0-5.attn.q.weight`), so a 30-layer
model prints a screenful, and a K-quant mixture shows exactly which layers get more bits.

Torch-free: only the spec, the inventory and the targets' torch-free tables are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnic.spec.layers import STATE_KINDS, state_numel
from omnic.quant.select import TensorScheme, method_for, storage_id, tensor_schemes
from omnic.targets.fates import Fate, NotCarried, fates

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

_LAYER = re.compile(r"^layers\.(\d+)\.")


@dataclass
class Row:
    """One tensor, or a run of consecutive layers of one tensor kind with identical fates."""

    name: str  # "embed.weight", "layers.0-5.attn.q.weight"
    tensors: list[str]  # the canonical names it stands for
    rule: str  # "default", "overrides[0] {role: embedding}", "fp32 (not a matrix)"
    scheme: str  # storage id: int4_g32, int8_channel, fp32 ...
    targets: dict[str, str] = field(default_factory=dict)  # target -> native form
    bytes: dict[str, int] = field(default_factory=dict)  # target -> bytes of these tensors


@dataclass
class Explanation:
    """What `--explain-quant` prints (and `--json` dumps)."""

    spec: str
    targets: list[str]
    rows: list[Row]
    not_carried: dict[str, str]  # target -> why it cannot carry the spec
    grids: dict[str, list[str]]  # target -> distinct "form: grid" notes
    totals: dict[str, int]  # target -> weight bytes
    kv_cache: dict[str, str] = field(default_factory=dict)  # target -> KV cache storage
    kv_setting: str = "none"  # quantization.kv_cache
    # target -> positions per layer, from the per-layer table (sliding layers' rings)
    kv_extent: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def lookup(self, tensor: str) -> Row:
        """The row a canonical tensor name belongs to."""
        for row in self.rows:
            if tensor in row.tensors:
                return row
        raise KeyError(tensor)


# Why a tensor that is not a matrix stays fp32, by its last name part where it is not the norm.
_NOT_A_MATRIX = {
    ".conv.kernel.weight": "fp32 (a short_conv kernel: a few taps per channel, too few to "
                           "share a scale, and read once per token)",
    ".ssm.conv.weight": "fp32 (a mamba2 convolution: a few taps per channel, too few to share "
                        "a scale, and read once per token)",
    ".ssm.conv.bias": "fp32 (a mamba2 convolution's bias)",
    ".ssm.A_log": "fp32 (a mamba2 decay: exp(dt * A) compounds over every token, so an error "
                  "in A grows with the context; one value per head)",
    ".ssm.dt_bias": "fp32 (a mamba2 time-step bias: it sets each head's decay; one value per "
                    "head)",
    ".ssm.D": "fp32 (a mamba2 skip weight: one value per head)",
    ".deltanet.b.weight": "fp32 (a gated_deltanet beta projection: one row per value head, "
                          "0.1 % of the weights; it sets how much each token writes to the "
                          "state, so its error compounds; onnxruntime-genai keeps it dense)",
    ".deltanet.a.weight": "fp32 (a gated_deltanet decay projection: one row per value head; "
                          "exp(g) compounds over every token; onnxruntime-genai keeps it dense)",
    ".deltanet.conv.weight": "fp32 (a gated_deltanet convolution: a few taps per channel, too "
                             "few to share a scale, and read once per token)",
    ".deltanet.A_log": "fp32 (a gated_deltanet decay: exp(g) compounds over every token, so an "
                       "error in A grows with the context; one value per value head)",
    ".deltanet.dt_bias": "fp32 (a gated_deltanet decay bias: it sets each value head's decay; "
                         "one value per head)",
}


def rule_of(spec: "ResolvedSpec", ts: TensorScheme, is_matrix: bool,
            method: str = "rtn", name: str = "") -> str:
    """The spec rule that chose `ts`, as text; a calibrated `method` of int4 codes follows."""
    if not is_matrix:
        return next((why for end, why in _NOT_A_MATRIX.items() if name.endswith(end)),
                    "fp32 (not a matrix)")
    how = f"; codes {method} on calibration text" if method != "rtn" and ts.scheme == "int4" \
        else ""
    if ts.override is None:
        return "default" + how
    override = spec.quantization.overrides[ts.override]
    keys = ", ".join(f"{k}: {v if k != 'layers' else list(v)}"
                     for k, v in override.match.model_dump(exclude_none=True).items())
    why = f" ({override.reason})" if override.reason else ""
    return f"overrides[{ts.override}] {{{keys}}}{why}{how}"


def _template(name: str) -> tuple[str, int | None]:
    m = _LAYER.match(name)
    if not m:
        return name, None
    return "layers.{}." + name[m.end():], int(m.group(1))


def explain(spec: "ResolvedSpec", targets: list[str] | None = None) -> Explanation:
    """Explain the quantization of a resolved spec for its enabled targets (or `targets`)."""
    from omnic.spec.inventory import decoder_tensors

    ids = list(spec.targets.enabled() if targets is None else targets)
    tensors = decoder_tensors(spec.model)
    schemes = tensor_schemes(spec, tensors)
    per_target: dict[str, dict[str, Fate]] = {}
    not_carried: dict[str, str] = {}
    for t in ids:
        try:
            per_target[t] = fates(spec, t)
        except NotCarried as why:
            not_carried[t] = str(why)
    carried = [t for t in ids if t in per_target]

    # One key per tensor: everything a row shows except the name.
    keyed = []
    for info in tensors:
        ts = schemes[info.name]
        forms = {t: per_target[t][info.name].form for t in carried}
        rule = rule_of(spec, ts, info.is_matrix, method_for(spec.quantization, info), info.name)
        key = (rule, storage_id(ts), tuple(forms.values()))
        keyed.append((info.name, key, forms))

    # Runs of consecutive layers per tensor kind, kinds in inventory order.
    order: list[str] = []
    runs: dict[str, list[tuple[list[int], list[str], tuple, dict]]] = {}
    for name, key, forms in keyed:
        tmpl, layer = _template(name)
        if tmpl not in runs:
            order.append(tmpl)
            runs[tmpl] = []
        last = runs[tmpl][-1] if runs[tmpl] else None
        if (last is not None and layer is not None and last[2] == key
                and last[0][-1] == layer - 1):
            last[0].append(layer)
            last[1].append(name)
        else:
            runs[tmpl].append(([] if layer is None else [layer], [name], key, forms))
    rows = []
    for tmpl in order:
        for layers, names, key, forms in runs[tmpl]:
            if not layers:
                label = names[0]
            else:
                span = str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
                label = tmpl.format(span)
            rows.append(Row(label, names, key[0], key[1], dict(forms), {
                t: sum(per_target[t][n].bytes for n in names) for t in carried}))

    grids: dict[str, list[str]] = {}
    for t in carried:
        seen: dict[str, str] = {}
        for fate in per_target[t].values():
            if fate.grid and fate.form not in seen:
                seen[fate.form] = fate.grid
        grids[t] = [f"{form}: {grid}" for form, grid in seen.items()]
    totals = {t: sum(f.bytes for f in per_target[t].values()) for t in carried}
    kv = {t: kv_cache_form(spec, t, per_target[t]) for t in carried}
    return Explanation(spec.name, ids, rows, not_carried, grids, totals, kv,
                       spec.quantization.kv_cache, {t: kv_extent(spec, t) for t in carried})


def kv_extent(spec: "ResolvedSpec", target: str) -> str:
    """Positions per layer, from the per-layer table: `4,096 x 6 layers, positions each`, or
    with sliding layers `512 (sliding) x 15 + 4,096 x 3 layers, positions each`."""
    from collections import Counter

    from omnic.targets.kv_layout import kv_positions

    table = spec.model.table
    counts = Counter((n, table[i].attention) for i, n in enumerate(kv_positions(spec, target))
                     if table[i].attention not in STATE_KINDS)
    parts = [f"{n:,}{' (sliding)' if kind == 'sliding' else ''} x {k}"
             for (n, kind), k in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1]))]
    text = " + ".join(parts) + " layers, positions each"
    m = spec.model
    for kind, (n, numel) in state_numel(m).items():  # fixed-size float32 states (plan.state_bytes)
        shape = (f"{m.short_conv.kernel - 1} x {m.d_model:,}" if kind == "short_conv" else
                 f"{m.mamba2.kernel - 1} x {m.mamba2.conv_channels:,} + {m.mamba2.heads} x "
                 f"{m.mamba2.head_dim} x {m.mamba2.d_state}")
        text += f"; {kind} state: {shape} float32 x {n} layers, whatever the context"
    return text


def kv_cache_form(spec: "ResolvedSpec", target: str, fates_: dict[str, Fate]) -> str:
    """The KV cache storage of a target that carries the spec (the pre-flight rules refuse an
    int8 cache everywhere but GGUF, whose llama.cpp cache types are q8_0 / f32)."""
    if target == "gguf":
        return "q8_0 (llama.cpp cache type)" if spec.quantization.kv_cache == "int8" else "f32"
    if target == "coreml":
        return "fp16 states"
    if target == "executorch":
        floats = {f.form for f in fates_.values()} & {"fp16", "bf16"}
        return f"{floats.pop() if floats else 'fp32'} mutable buffers"
    return "float32"


def render(ex: Explanation, console: Any = None) -> None:
    """Print the explanation as a rich table, then each backend's integer grids."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(180, Console().width))
    carried = [t for t in ex.targets if t not in ex.not_carried]
    table = Table(title=f"{ex.spec}: what every tensor becomes", title_justify="left",
                  show_lines=True)
    table.add_column("tensor", overflow="fold")
    table.add_column("rule", overflow="fold")
    table.add_column("scheme")
    for t in carried:
        table.add_column(t, overflow="fold")
    for row in ex.rows:
        table.add_row(row.name, row.rule, row.scheme, *(row.targets[t] for t in carried))
    table.add_row("KV cache", f"kv_cache: {ex.kv_setting}", "",
                  *(f"{ex.kv_cache[t]}; {ex.kv_extent[t]}" for t in carried))
    mib = 1024 * 1024
    table.add_row("[b]weights", "", "", *(f"[b]{ex.totals[t] / mib:,.2f} MiB" for t in carried))
    console.print(table)
    for t, why in ex.not_carried.items():
        console.print(f"[yellow]{t}[/]: cannot carry this spec: {why}")
    for t in carried:
        if ex.grids.get(t):
            console.print(f"[b]{t}[/] grids: " + "; ".join(ex.grids[t]))
    console.print("omnic's reference (omnic.quant.reference): int4 -8..7 with scale = "
                  "extreme / -8, int8 -127..127, float32 scales, round half away from zero; "
                  "per-backend differences: omnic/quant/README.md")


def one_line(ex: Explanation, tensor: str) -> str:
    """`layers.3.attn.v.weight -> gguf Q6_K | onnx MatMulNBits int4 block 32 | ...`."""
    row = ex.lookup(tensor)
    parts = [f"{t} {row.targets[t]}" for t in ex.targets if t in row.targets]
    parts += [f"{t} (cannot carry)" for t in ex.targets if t in ex.not_carried]
    return f"{tensor} → " + " | ".join(parts)
