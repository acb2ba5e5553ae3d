"""Positions each target's KV cache holds, layer by layer, from the per-layer table (torch-free).

A full-attention layer keeps `context_length` positions everywhere. A sliding layer whose window
is shorter than the context keeps what its runtime allocates:

| target                    | sliding layer (window w < context c)                             |
|---------------------------|------------------------------------------------------------------|
| executorch, coreml, tvm   | a ring of w positions: omnic's static decode graph               |
|                           | (`Decoder.cache_lengths`, position p in slot p % w)              |
| gguf                      | llama.cpp's SWA cache: pad256(min(pad256(c), w + n_ubatch)),     |
|                           | n_ubatch = min(c, 512) as the GGUF runtime sets it; full layers  |
|                           | keep pad256(c) (llama.cpp pads every context to 256 cells)       |
| onnx                      | w + 16 (onnxruntime-genai's windowed cache, CPU slack 16) when   |
|                           | every layer fuses to GroupQueryAttention and the windows agree   |
|                           | (omnic.targets.onnx.window_cache); else c, genai's max_length    |

ref: llama.cpp src/llama-kv-cache-iswa.cpp (size_swa), src/llama-context.cpp (n_ctx padding)
ref: onnxruntime-genai src/models/windowed_kv_cache.cpp (ComputeWindowedKvCacheSize)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.constants import Targets
from omnic.spec.layers import STATE_KINDS
from omnic.targets.gguf.rules import kv_cells
from omnic.targets.onnx.rules import GENAI_WINDOW_SLACK, window_caches

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

# Targets whose decode graph allocates `Decoder.cache_lengths()`: rings for sliding layers.
RING_TARGETS = (Targets.EXECUTORCH, Targets.COREML, Targets.TVM)


def kv_positions(spec: "ResolvedSpec", target: str | None = None) -> list[int]:
    """Per layer, the positions `target`'s KV cache holds (None: the spec's own static graph,
    i.e. the ring layout); 0 for a layer that keeps a fixed-size state instead."""
    m = spec.model
    c = m.context_length
    genai_window = target == Targets.ONNX and window_caches(spec)
    out = []
    for row in m.table:
        windowed = row.window is not None and row.window < c
        if row.attention in STATE_KINDS:
            out.append(0)  # a fixed-size state, no KV cache (omnic.compiler.plan.state_bytes)
        elif target == Targets.GGUF:
            out.append(kv_cells(c, row.window))
        elif windowed and (target is None or target in RING_TARGETS):
            out.append(row.window)
        elif windowed and genai_window:
            out.append(min(c, row.window + GENAI_WINDOW_SLACK))
        else:
            out.append(c)
    return out


def layer_runs(spec: "ResolvedSpec") -> list[dict]:
    """The per-layer table as runs of equal rows, for the plan: {"layers": "0-4", "count": 5,
    "attention": ..., "window": ..., "rope": "theta 10000, dims 256" | "none (NoPE)",
    "kv_positions": {target: positions per layer}} in layer order, for every enabled target. A
    run holds consecutive layers only, so a 5:1 pattern shows every repeat."""
    targets = spec.targets.enabled()
    positions = {t: kv_positions(spec, t) for t in targets}
    runs: list[dict] = []
    for i, row in enumerate(spec.model.table):
        rope = ("— (no attention)" if row.attention in STATE_KINDS else "none (NoPE)"
                if row.rope is None else (
            f"theta {row.rope.theta:g}, dims {row.rope.dims}"
            + (f", {row.rope.scaling.kind} scaling" if row.rope.scaling else "")))
        key = (row.attention, row.window, rope)
        if runs and runs[-1]["_key"] == key and runs[-1]["_last"] == i - 1:
            runs[-1]["_last"] = i
        else:
            runs.append({"_key": key, "_first": i, "_last": i})
    out = []
    for r in runs:
        first, last = r["_first"], r["_last"]
        attention, window, rope = r["_key"]
        out.append({"layers": str(first) if first == last else f"{first}-{last}",
                    "count": last - first + 1, "attention": attention, "window": window,
                    "rope": rope, "kv_positions": {t: positions[t][first] for t in targets}})
    return out
