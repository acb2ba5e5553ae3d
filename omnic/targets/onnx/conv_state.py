"""LFM2's short_conv layers in the ONNX decoder, in onnxruntime-genai's `lfm2` layout.

A short_conv layer has no KV cache: it carries the last kernel - 1 values of its gated input
B * x, a fixed-size state. onnxruntime-genai's `lfm2` model type (its LFM2 cache) feeds such a
layer's state as one graph input and reads the next one from one graph output, named by the
layer's index among ALL layers, beside the attention layers' usual KV names:
  inputs   past.{i}.conv                 [batch_size, d_model, kernel - 1] (conv layers)
           past_key_values.{i}.key/value [batch_size, n_kv_heads, past_sequence_length, head_dim]
                                         (attention layers only)
  outputs  present.{i}.conv, present.{i}.key/value, likewise
The state's layout is omnic's own ([batch, channels, kernel - 1], `ShortConv`), so nothing is
transposed. genai_config.json says which layer is which (`layer_types`: "conv" or
"full_attention", one per layer) and `conv_cache_size` = kernel - 1; genai takes the state's
shape from the graph input (all but the batch dimension must be fixed), zeroes it before the
first token and hands each step's present to the next as its past.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/lfm2.py
       (make_inputs_and_outputs, make_short_conv, update_genai_config)
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/models/kv_cache.cpp
       (LFM2Cache; ConvKeyValueCache in the 0.18 binary: a layer not "full_attention" is a
       conv layer)

The convolution itself stays plain ONNX (Concat, depthwise Conv, Slice), as torch.onnx exports
`ShortConv`: the builder's com.microsoft CausalConvWithState is a speed fusion, not a layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.targets.onnx import state_export
from omnic.targets.onnx.state_export import StateKind

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

    from omnic.spec import ResolvedSpec

PAST_CONV, PRESENT_CONV = "past.%d.conv", "present.%d.conv"  # genai's name templates
# genai's layer_types vocabulary (LFM2Cache: anything but full_attention is a conv layer)
GENAI_CONV, GENAI_ATTENTION = "conv", "full_attention"
CONV = StateKind("past_conv", PAST_CONV, PRESENT_CONV)  # the layer's one state


def conv_layers(decoder: "torch.nn.Module") -> list[int]:
    """Indices of the decoder's short_conv layers (empty: an attention-only decoder)."""
    return [i for i, block in enumerate(decoder.layers) if block.conv is not None]


def export_decoder(decoder: "torch.nn.Module", opset: int) -> "ir.Model":
    """`forward_concat` of a decoder with short_conv layers as an unoptimised ONNX model in
    genai's lfm2 layout (the names above); initializers keep the state-dict names."""
    import torch

    c = decoder.config
    convs = conv_layers(decoder)
    return state_export.export_decoder(
        decoder, opset, _hybrid_entry(decoder), convs, [CONV],
        lambda b: [[torch.zeros(b, c.d_model, c.conv_kernel - 1) for _ in convs]])


def _hybrid_entry(decoder: "torch.nn.Module") -> "torch.nn.Module":
    """The decoder as a module whose forward takes the conv states as a list of their own (the
    attention layers' past in past_k / past_v, in layer order), for torch.export. It shares
    every parameter under its canonical name (`Decoder.concat_entry`)."""
    from omnic.model.modules.decoder import Decoder

    class HybridView(Decoder):
        def forward(self, input_ids, attention_mask, position_ids, past_k, past_v, past_conv):  # type: ignore[override]
            keys, values, states = iter(past_k), iter(past_v), iter(past_conv)
            ks, vs = [], []
            for block in self.layers:
                if block.conv is not None:  # the state in k's slot, an empty [B, d, 0] in v's
                    state = next(states)
                    ks.append(state)
                    vs.append(state[:, :, :0])
                else:
                    ks.append(next(keys))
                    vs.append(next(values))
            logits, new_k, new_v = self.forward_concat(input_ids, attention_mask, position_ids,
                                                       ks, vs)
            attn = [i for i, block in enumerate(self.layers) if block.conv is None]
            convs = [i for i, block in enumerate(self.layers) if block.conv is not None]
            return (logits, [new_k[i] for i in attn], [new_v[i] for i in attn],
                    [new_k[i] for i in convs])

    entry = decoder.concat_entry()
    entry.__class__ = HybridView
    return entry


def genai_layers(spec: "ResolvedSpec") -> dict[str, Any]:
    """The decoder section's additions for genai's `lfm2` type: layer_types, conv_cache_size
    and the conv state names."""
    m = spec.model
    return {
        "layer_types": [GENAI_CONV if row.attention == "short_conv" else GENAI_ATTENTION
                        for row in m.table],
        "conv_cache_size": m.short_conv.kernel - 1,
        "inputs": {"past_conv_names": PAST_CONV},
        "outputs": {"present_conv_names": PRESENT_CONV},
    }


def present_name(past: str) -> str:
    """The graph output that carries the next value of the past input `past`."""
    if past.startswith("past_key_values."):
        return "present." + past[len("past_key_values."):]
    return "present." + past[len("past."):]


def empty_states(session: Any) -> dict[str, np.ndarray]:
    """Batch-1 zero conv states (past.{i}.conv) of an onnxruntime session: the state before
    the first token, as genai starts it."""
    return state_export.empty_states(session, ".conv")
