"""The ONNX export of a hybrid decoder: attention layers with a KV cache beside layers that carry
fixed-size states instead (LFM2's short_conv, conv_state.py; Granite 4's mamba2,
mamba2_state.py; Qwen3.5's gated_deltanet, deltanet_state.py).

Each such layer's states are graph inputs and outputs of their own, named by the layer's index
among ALL layers ("past.{i}.conv" -> "present.{i}.conv" ...), after the attention layers' usual
past_key_values.{i}.key/value -> present.{i}.key/value. Only the batch dimension of a state is
dynamic: its other dimensions are the layer's (genai allocates a state from the graph input's
fixed dimensions). The caller supplies what differs between the families: which layers carry
states, the kinds of state each carries (`StateKind`), the export entry that takes them and
dummy states to trace with. A layer with two states (mamba2, gated_deltanet) takes its convolution
state in its KV slots' k and its recurrent state in v (`two_state_entry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch


@dataclass(frozen=True)
class StateKind:
    """One kind of per-layer state in the graph."""

    arg: str  # the export entry's parameter taking these states (a list, one per state layer)
    past: str  # graph input name template (%d: the layer's index among all layers)
    present: str  # graph output name template


def io_names(decoder: "torch.nn.Module", layers: list[int], kinds: list[StateKind]
             ) -> tuple[list[str], list[str]]:
    """Graph input and output names of a decoder whose `layers` carry `kinds` of state (the
    others a KV cache), in the exporter's argument order."""
    attn = [i for i in range(len(decoder.layers)) if i not in layers]
    inputs = ["input_ids", "attention_mask", "position_ids"]
    inputs += [f"past_key_values.{i}.key" for i in attn]
    inputs += [f"past_key_values.{i}.value" for i in attn]
    outputs = ["logits"]
    outputs += [f"present.{i}.key" for i in attn]
    outputs += [f"present.{i}.value" for i in attn]
    for kind in kinds:
        inputs += [kind.past % i for i in layers]
    for kind in kinds:
        outputs += [kind.present % i for i in layers]
    return inputs, outputs


def export_decoder(decoder: "torch.nn.Module", opset: int, entry: "torch.nn.Module",
                   layers: list[int], kinds: list[StateKind],
                   dummy_states: Callable[[int], list[list["torch.Tensor"]]],
                   translations: dict[Any, Callable] | None = None) -> "ir.Model":
    """`forward_concat` of a hybrid decoder as an unoptimised ONNX model with the I/O of
    `io_names`; initializers keep the state-dict names.

    `entry` is the decoder as a module whose forward takes (input_ids, attention_mask,
    position_ids, past_k, past_v) and then, per kind, that kind's states as a list (parameter
    `kind.arg`), and returns the logits, the attention layers' new k and v and the new states in
    the same order. `dummy_states(batch)` gives zero states to trace with: per kind, one tensor
    per state layer (their shapes past the batch are the graph's). `translations` maps custom
    torch ops the entry calls to their ONNX functions (the exporter's custom_translation_table)."""
    import onnx_ir as ir
    import torch

    from omnic.targets.onnx.export import BATCH, PAST, SEQ, TOTAL, export_quietly

    c = decoder.config
    n_attn = c.n_layers - len(layers)
    b, t, p = 2, 3, 4  # sizes > 1: torch.export specialises dimensions of size 0 or 1
    ids = torch.zeros((b, t), dtype=torch.int64)
    mask = torch.ones((b, p + t), dtype=torch.int64)
    pos = torch.arange(p, p + t, dtype=torch.int64)[None].expand(b, t).contiguous()
    past_k = [torch.zeros(b, c.n_kv_heads, p, c.head_dim) for _ in range(n_attn)]
    past_v = [torch.zeros(b, c.n_kv_heads, p, c.head_dim) for _ in range(n_attn)]
    states = dummy_states(b)
    cache_axes = {0: BATCH, 2: PAST}
    dynamic: dict[str, Any] = {
        "input_ids": {0: BATCH, 1: SEQ}, "attention_mask": {0: BATCH, 1: TOTAL},
        "position_ids": {0: BATCH, 1: SEQ}, "past_k": [cache_axes] * n_attn,
        "past_v": [cache_axes] * n_attn}
    for kind in kinds:  # fixed-size states: only the batch varies
        dynamic[kind.arg] = [{0: BATCH}] * len(layers)
    inputs, outputs = io_names(decoder, layers, kinds)
    args = (ids, mask, pos, past_k, past_v, *states)
    extra = {"custom_translation_table": translations} if translations else {}
    model = export_quietly(entry, args, "the decoder", opset, dynamic_shapes=dynamic,
                           input_names=inputs, output_names=outputs, **extra)
    shapes = {"input_ids": [BATCH, SEQ], "attention_mask": [BATCH, TOTAL],
              "position_ids": [BATCH, SEQ], "logits": [BATCH, SEQ, c.vocab_size]}
    past_shapes, present_shapes = dict(shapes), dict(shapes)
    for kind, tensors in zip(kinds, states):
        for i, tensor in zip(layers, tensors):
            past_shapes[kind.past % i] = present_shapes[kind.present % i] = [
                BATCH, *(int(d) for d in tensor.shape[1:])]
    for v in model.graph.inputs:
        v.shape = ir.Shape(past_shapes.get(v.name) or
                           [BATCH, c.n_kv_heads, PAST, c.head_dim])
    for v in model.graph.outputs:
        v.shape = ir.Shape(present_shapes.get(v.name) or
                           [BATCH, c.n_kv_heads, TOTAL, c.head_dim])
    return model


def two_state_entry(decoder: "torch.nn.Module", layers: list[int]) -> "torch.nn.Module":
    """`decoder` as a module whose forward takes the convolution and the recurrent states of
    `layers` (mamba2 or gated_deltanet layers) as two lists of their own, the attention layers'
    past in past_k / past_v, in layer order, and returns (logits, the attention layers' new k
    and v, the new convolution and recurrent states): the entry `export_decoder` wants for the
    kinds [conv, recurrent]. It shares every parameter under its canonical name
    (`Decoder.concat_entry`)."""
    from omnic.model.modules.decoder import Decoder

    class TwoStateView(Decoder):
        def forward(self, input_ids, attention_mask, position_ids, past_k, past_v,  # type: ignore[override]
                    past_conv, past_recurrent):
            keys, values = iter(past_k), iter(past_v)
            convs, recurrents = iter(past_conv), iter(past_recurrent)
            ks, vs = [], []
            for i in range(len(self.layers)):  # a state layer: the conv state in k's slot, the
                ks.append(next(convs) if i in layers else next(keys))  # recurrent one in v's
                vs.append(next(recurrents) if i in layers else next(values))
            logits, new_k, new_v = self.forward_concat(input_ids, attention_mask, position_ids,
                                                       ks, vs)
            attn = [i for i in range(len(self.layers)) if i not in layers]
            return (logits, [new_k[i] for i in attn], [new_v[i] for i in attn],
                    [new_k[i] for i in layers], [new_v[i] for i in layers])

    entry = decoder.concat_entry()
    entry.__class__ = TwoStateView
    return entry


def empty_states(session: Any, suffix: str) -> dict[str, np.ndarray]:
    """Batch-1 zero states of an onnxruntime session's inputs past.{i}{suffix}: the state
    before the first token."""
    return {i.name: np.zeros((1, *i.shape[1:]), dtype=np.float32)
            for i in session.get_inputs() if i.name.startswith("past.") and
            i.name.endswith(suffix)}
