"""Per-layer patterns: which layers differ and how, resolved to one explicit table (torch-free).

A model says how its layers differ in one of three ways, and `omnic resolve` turns each into the
same table (`model.layers`, one row per layer; a table written by hand must equal it):
- a pattern: `layer_pattern: "5 sliding : 1 full"` (Gemma 3), `"3 full : 1 nope"` (SmolLM3);
  groups `COUNT KIND` separated by `:`, repeated from layer 0. It must divide `n_layers`, unless
  it ends with `...` (the last repeat is cut short, as Gemma 3 1B's 26 layers are);
- an explicit list: `layer_pattern: [sliding, sliding, full, ...]`, one kind per layer;
- the shortcuts: `sliding_window: {layers: all | even}` (Mistral, Gemma 2).

Kinds: `full` (global attention with RoPE), `sliding` (attention over the last
`sliding_window.size` tokens, with `rope.sliding`'s base when given), `nope` (global attention with
no position embedding), `short_conv` (no attention: LFM2's gated short convolution over the last
`short_conv.kernel` tokens, with a fixed-size state instead of a KV cache), `mamba2` (no attention:
a Mamba-2 state-space layer, `model.mamba2`, Granite 4; a convolution state and a recurrent
state), `gated_deltanet` (no attention: a Gated DeltaNet linear-attention layer,
`model.gated_deltanet`, Qwen3.5; a convolution state and a recurrent state).
`rope.rotary_dim` rotates only the first dims of each head (partial rotary, Phi-4-mini, Qwen3.5).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from omnic.spec.base import SpecModel
from omnic.spec.rope import RopeScaling

# The functions below take an `omnic.spec.model.Model` (typed Any: model.py imports this module).
Model = Any

KINDS = ("full", "sliding", "nope", "short_conv", "mamba2", "gated_deltanet")
LayerKind = Literal["full", "sliding", "nope", "short_conv", "mamba2", "gated_deltanet"]
# Row kinds that carry a fixed-size recurrent state instead of a KV cache, each configured by the
# model field of the same name (model.short_conv, model.mamba2, model.gated_deltanet).
STATE_KINDS = ("short_conv", "mamba2", "gated_deltanet")
_GROUP = re.compile(r"^\s*(?:(\d+)\s+)?([a-z_][a-z0-9_]*)\s*$")


class LayerRope(SpecModel):
    theta: PositiveFloat = Field(description="RoPE base frequency of this layer.")
    scaling: RopeScaling | None = Field(None, description="Context-extension scaling, or null.")
    dims: PositiveInt = Field(description="Dimensions of each head that are rotated (the first "
                              "`dims`; head_dim unless the rotary is partial).")


class Layer(SpecModel):
    """One row of the per-layer table."""

    attention: Literal["full", "sliding", "short_conv", "mamba2", "gated_deltanet"] = Field(
        description="The layer's token mixer. full: attention over every earlier token; sliding: "
        "only the last `window` tokens; short_conv: no attention, a gated short convolution "
        "(model.short_conv) whose state has a fixed size; mamba2: no attention, a Mamba-2 "
        "state-space layer (model.mamba2) with a fixed-size state; gated_deltanet: no attention, "
        "a Gated DeltaNet layer (model.gated_deltanet) with a fixed-size state.")
    window: PositiveInt | None = Field(
        None, description="Tokens a sliding layer attends back to, itself included; null for full.")
    rope: LayerRope | None = Field(description="Rotary embedding of this layer; null: no position "
                                   "embedding (NoPE).")


class PatternError(ValueError):
    """A layer pattern that cannot be read or does not fit the model."""


def parse_pattern(pattern: str) -> tuple[list[tuple[int, str]], bool]:
    """("5 sliding : 1 full ...") -> ([(5, "sliding"), (1, "full")], cut): `cut` when it ends
    with `...`. Nothing is expanded: a count may be any size (check_pattern bounds it)."""
    text = pattern.strip()
    cut = text.endswith("...")
    if cut:
        text = text[:-3]
    groups = []
    for group in text.split(":"):
        m = _GROUP.match(group)
        if not m:
            raise PatternError(f"{group.strip()!r} is not `COUNT KIND` (for example "
                               "\"5 sliding : 1 full\")")
        count, kind = int(m.group(1) or 1), m.group(2)
        if kind not in KINDS:
            raise PatternError(f"unknown layer kind {kind!r} (kinds: {', '.join(KINDS)})")
        if count < 1:
            raise PatternError(f"{group.strip()!r}: a group needs at least one layer")
        groups.append((count, kind))
    return groups, cut


def check_pattern(pattern: str | list[str], n_layers: int) -> set[str]:
    """The kinds a pattern uses; PatternError when it does not fit `n_layers`. Arithmetic only
    (no per-layer list), so that a huge n_layers or count costs nothing before the compiler's
    tensor-count guard refuses it."""
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise PatternError(f"the list has {len(pattern)} kinds for n_layers={n_layers}")
        return set(pattern)
    groups, cut = parse_pattern(pattern)
    cycle = sum(count for count, _ in groups)
    if cycle > n_layers:
        raise PatternError(f"one repeat is {cycle:,} layers, more than n_layers={n_layers}")
    if n_layers % cycle and not cut:
        raise PatternError(
            f"a cycle of {cycle} layers does not divide n_layers={n_layers}; end the pattern "
            f"with '...' to cut the last repeat short, or list every layer")
    return {kind for _, kind in groups}


def pattern_kinds(pattern: str | list[str], n_layers: int) -> list[str]:
    """The kind of every layer. PatternError when the pattern does not fit `n_layers`."""
    check_pattern(pattern, n_layers)
    if isinstance(pattern, list):
        return list(pattern)
    groups, _ = parse_pattern(pattern)
    cycle = [kind for count, kind in groups for _ in range(count)]
    return [cycle[i % len(cycle)] for i in range(n_layers)]


def layer_kinds(model: Model) -> list[str]:
    """Every layer's kind from the pattern or the sliding-window shortcut (not the table)."""
    n = model.n_layers
    if model.layer_pattern is not None:
        return pattern_kinds(model.layer_pattern, n)
    sw = model.sliding_window
    if sw is None:
        return ["full"] * n
    if sw.layers == "even":
        return ["sliding" if i % 2 == 0 else "full" for i in range(n)]
    return ["sliding"] * n


def derived_table(model: Model) -> list[Layer]:
    """The table the pattern, the shortcuts and `rope` describe (ignores `model.layers`)."""
    rope, sw = model.rope, model.sliding_window
    dims = rope.rotary_dim or model.dim_per_head
    full = LayerRope(theta=rope.theta, scaling=rope.scaling, dims=dims)
    local = full if rope.sliding is None else LayerRope(
        theta=rope.sliding.theta, scaling=rope.sliding.scaling, dims=dims)
    rows = []
    for kind in layer_kinds(model):
        if kind == "sliding":
            rows.append(Layer(attention="sliding", window=sw.size if sw else None, rope=local))
        elif kind in STATE_KINDS:
            rows.append(Layer(attention=kind, rope=None))
        else:
            rows.append(Layer(attention="full", rope=None if kind == "nope" else full))
    return rows


def check_table(model: Model) -> None:
    """Raise ValueError when the pattern, the shortcuts and the explicit table disagree or do not
    fit the model (pydantic reports it on the model's `layers` / `layer_pattern` field)."""
    hd = model.dim_per_head
    rope, sw = model.rope, model.sliding_window
    if rope.rotary_dim is not None and (rope.rotary_dim > hd or rope.rotary_dim % 2):
        raise ValueError(f"rope: rotary_dim {rope.rotary_dim} must be even and at most "
                         f"head_dim {hd}")
    if model.layer_pattern is not None:
        if sw is not None and sw.layers is not None:
            raise ValueError(f"sliding_window: its layers shortcut ({sw.layers!r}) and "
                             "layer_pattern both say which layers slide; keep one")
        try:
            kinds = check_pattern(model.layer_pattern, model.n_layers)
        except PatternError as err:
            raise ValueError(f"layer_pattern: {err}") from None
        if "sliding" in kinds and sw is None:
            raise ValueError("layer_pattern: it has sliding layers but the model has no "
                             "sliding_window: {size: N}")
        for kind in STATE_KINDS:
            if kind in kinds and getattr(model, kind) is None:
                raise ValueError(f"layer_pattern: it has {kind} layers but the model has no "
                                 f"{kind}: block")
        if kinds <= set(STATE_KINDS):
            raise ValueError(f"layer_pattern: every layer is {' or '.join(sorted(kinds))}; a "
                             "hybrid model needs at least one attention layer")
    for kind in STATE_KINDS:  # (a pattern's kinds, not a per-layer list: n_layers may be huge)
        if getattr(model, kind) is not None and (
                model.layer_pattern is None
                or kind not in check_pattern(model.layer_pattern, model.n_layers)):
            raise ValueError(f"{kind}: it is set, but no layer of layer_pattern is {kind}")
    if model.layers is None:
        dims = rope.rotary_dim or hd
        _check_rope(LayerRope(theta=rope.theta, scaling=rope.scaling, dims=dims), hd, "rope")
        return
    table = model.layers
    if len(table) != model.n_layers:
        raise ValueError(f"layers has {len(table)} rows for n_layers={model.n_layers}")
    for i, row in enumerate(table):
        if row.attention in STATE_KINDS and row.rope is not None:
            raise ValueError(f"layers[{i}]: a {row.attention} layer has no rope")
        if (row.attention == "sliding") != (row.window is not None):
            raise ValueError(f"layers[{i}]: a sliding layer needs a window and a full one has "
                             "none")
        _check_rope(row.rope, hd, f"layers[{i}].rope")
    # The table is what `omnic resolve` writes from rope, sliding_window and layer_pattern
    # (their defaults included), never a second source: a resolved spec must say one thing.
    for i, (row, want) in enumerate(zip(table, derived_table(model))):
        if row != want:
            raise ValueError(
                f"layers[{i}] is {_short(row)}, but rope, sliding_window and layer_pattern "
                f"make it {_short(want)}; the table follows those fields (change them, or "
                "leave the table to omnic resolve)")


def _check_rope(rope: LayerRope | None, head_dim: int, where: str) -> None:
    if rope is None:
        return
    if rope.dims > head_dim or rope.dims % 2:
        raise ValueError(f"{where}: dims {rope.dims} must be even and at most head_dim "
                         f"{head_dim}")
    sc = rope.scaling
    if sc is not None and sc.kind == "longrope":
        for name in ("short_factor", "long_factor"):
            if len(getattr(sc, name)) != rope.dims // 2:
                raise ValueError(f"{where}.scaling.{name} has {len(getattr(sc, name))} entries; "
                                 f"{rope.dims // 2} rotated pairs need one each")


def _short(row: Layer) -> str:
    rope = "nope" if row.rope is None else f"rope theta {row.rope.theta:g} dims {row.rope.dims}"
    window = f" window {row.window}" if row.window else ""
    return f"{row.attention}{window}, {rope}"


def short_conv_layers(model: Model) -> list[int]:
    """The layers whose kind is short_conv: each holds a fixed-size state, no KV cache."""
    return [i for i, row in enumerate(table(model)) if row.attention == "short_conv"]


def state_layers(model: Model) -> list[int]:
    """The layers that hold a fixed-size state instead of a KV cache (any STATE_KINDS)."""
    return [i for i, row in enumerate(table(model)) if row.attention in STATE_KINDS]


def state_numel(model: Model) -> dict[str, tuple[int, int]]:
    """state kind -> (layers of that kind, numbers one such layer's state holds): a short_conv
    layer keeps kernel - 1 values of each of d_model channels; a mamba2 or gated_deltanet layer
    its convolution's and its recurrent state (`state_numel` of its block). Only the kinds the
    model has."""
    kinds = [row.attention for row in table(model)]
    out = {}
    if "short_conv" in kinds:
        out["short_conv"] = (kinds.count("short_conv"),
                             (model.short_conv.kernel - 1) * model.d_model)
    for kind in ("mamba2", "gated_deltanet"):
        if kind in kinds:
            out[kind] = (kinds.count(kind), getattr(model, kind).state_numel)
    return out


def state_shapes(model: Model) -> dict[int, list[list[int]]]:
    """layer -> the shapes of its fixed-size state at batch 1, as the targets keep them in the
    layer's k (and v) cache slots: a short_conv layer's [1, d_model, kernel - 1]; a mamba2
    layer's convolution state [1, channels, kernel - 1] and recurrent state
    [1, heads, head_dim, d_state]; a gated_deltanet layer's [1, channels, kernel - 1] and
    [1, value_heads, key_dim, value_dim]. Attention layers are not listed."""
    out = {}
    for i, row in enumerate(table(model)):
        if row.attention == "short_conv":
            out[i] = [[1, model.d_model, model.short_conv.kernel - 1]]
        elif row.attention == "mamba2":
            s = model.mamba2
            out[i] = [[1, s.conv_channels, s.kernel - 1], [1, s.heads, s.head_dim, s.d_state]]
        elif row.attention == "gated_deltanet":
            g = model.gated_deltanet
            out[i] = [[1, g.conv_channels, g.kernel - 1],
                      [1, g.value_heads, g.key_dim, g.value_dim]]
    return out


def table(model: Model) -> list[Layer]:
    """The per-layer table: the explicit one when given, else the derived one."""
    return list(model.layers) if model.layers is not None else derived_table(model)
