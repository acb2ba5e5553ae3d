"""Window-sized KV caches for the sliding-window layers (GroupQueryAttention
`sliding_window_cache=1`), and how a runner feeds them.

A sliding layer only ever reads its last `window` keys, so onnxruntime-genai gives such layers a
cache of `window + slack` positions instead of max_length (the `sliding_window` section of
genai_config.json, `layers` listing them), and onnxruntime's GroupQueryAttention evicts inside that
buffer: with `sliding_window_cache=1` the past/present length is the buffer's capacity C >= window,
whatever the sequence length. genai uses this only with past/present buffer sharing, i.e. when
every layer's attention is one GroupQueryAttention node, so this pass does nothing otherwise (the
windowed GQA nodes then read the whole growing cache, as before). One window size for all the
sliding layers: genai's config has one.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/models/windowed_kv_cache.cpp
       (ComputeWindowedKvCacheSize: C = window + 16 on CPU)
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (get_attention_op_attributes, make_genai_config: sliding_window)

The windowed layers' cache inputs and outputs get their own dimension name, `WINDOW_DIM`, and the
model's metadata `omnic.window_cache` records {"window", "layers"}: omnic's runners (which grow
the other layers' caches by concatenation) read it to start those layers at capacity `window`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

MS = "com.microsoft"
WINDOW_DIM = "window_cache_length"
METADATA_KEY = "omnic.window_cache"
_PAST_KEY = re.compile(r"^past_key_values\.(\d+)\.key$")


def use_window_caches(model: "ir.Model") -> int:
    """Give every sliding-window GroupQueryAttention a window-sized cache (in place), when every
    layer is one; returns how many layers got one (0: none, the graph unchanged)."""
    import onnx_ir as ir

    graph = model.graph
    layers = {int(m.group(1)) for v in graph.inputs if (m := _PAST_KEY.match(v.name or ""))}
    gqas = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]
    if not layers or len(gqas) != len(layers):
        return 0
    windowed = [(n, n.attributes.get_int("local_window_size", -1)) for n in gqas]
    windowed = [(n, w) for n, w in windowed if w > 0]
    if len({w for _, w in windowed}) != 1:  # none, or several sizes (genai takes one)
        return 0
    plan = []
    for node, _ in windowed:
        cache = [node.inputs[3], node.inputs[4], node.outputs[1], node.outputs[2]]
        m = _PAST_KEY.match(cache[0].name or "") if cache[0] is not None else None
        if m is None or not all(v is not None and (v.is_graph_input() or v.is_graph_output())
                                for v in cache):
            return 0
        plan.append((int(m.group(1)), node, cache))
    for _, node, cache in plan:
        node.attributes["sliding_window_cache"] = ir.AttrInt64("sliding_window_cache", 1)
        for v in cache:
            dims = list(v.shape) if v.shape is not None else ["batch_size", None, None, None]
            v.shape = ir.Shape([*dims[:2], WINDOW_DIM, *dims[3:]])
    window = windowed[0][1]
    model.metadata_props[METADATA_KEY] = json.dumps(
        {"layers": sorted(i for i, _, _ in plan), "window": window}, sort_keys=True)
    return len(plan)


def window_cache(metadata: dict[str, str]) -> dict[str, Any] | None:
    """{"window", "layers"} from a model's metadata (a session's custom_metadata_map), or None."""
    raw = metadata.get(METADATA_KEY)
    return json.loads(raw) if raw else None


def empty_cache(session: Any) -> dict[str, np.ndarray]:
    """Batch-1 past_key_values.* inputs of an onnxruntime session before the first step: zero
    positions, or `window` positions for the windowed layers (their capacity; any C >= window
    gives the same attention)."""
    info = window_cache(session.get_modelmeta().custom_metadata_map) or {}
    capacity = info.get("window", 0)
    empty = {}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            length = capacity if i.shape[2] == WINDOW_DIM else 0
            empty[i.name] = np.zeros((1, i.shape[1], length, i.shape[3]), dtype=np.float32)
    return empty
