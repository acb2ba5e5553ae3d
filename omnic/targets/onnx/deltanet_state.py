"""Qwen3.5's gated_deltanet layers in the ONNX decoder, in onnxruntime-genai's `qwen3_5_text`
layout: their two states as graph inputs and outputs.

A gated_deltanet layer has no KV cache: it carries the last kernel - 1 inputs of its depthwise
convolution and one recurrent state S per value head (omnic.model.modules.deltanet), both
fixed-size. Each is one graph input and one graph output, named by the layer's index among ALL
layers, as onnxruntime-genai's builder names them for Qwen3.5, beside the attention layers' usual
KV names:
  inputs   past.{i}.conv                 [batch_size, conv_channels, kernel - 1]  (deltanet layers)
           past.{i}.recurrent            [batch_size, value_heads, key_dim, value_dim]
           past_key_values.{i}.key/value [batch_size, n_kv_heads, past_sequence_length, head_dim]
                                         (attention layers only)
  outputs  present.{i}.conv, present.{i}.recurrent, present.{i}.key/value, likewise
conv_channels = 2 * key_heads * key_dim + value_heads * value_dim (q | k | v, in_proj_qkv's rows).
Both are the builder's layouts for its CPU graph (CausalConvWithState / LinearAttention), and
omnic's own (the layer's k and v cache slots): nothing is transposed. Only the batch dimension is
dynamic. The one difference from the builder's graph: position_ids are [batch_size,
sequence_length], where the builder declares M-RoPE's [3, batch_size, sequence_length]; for text
the three rows are equal (M-RoPE is then plain RoPE), and genai feeds the rank the graph declares.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/qwen.py
       (Qwen35TextModel: configure_gated_delta_net_io, make_qwen_gated_delta_net)
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (input_shapes past.conv / past.recurrent, make_genai_config)

onnxruntime-genai 0.18 runs it: genai_config.json names the type `qwen3_5_text` and the four
state name templates (past_conv_names, past_recurrent_names, present_*), as the builder writes
them; genai finds the recurrent layers from those names, allocates each state from the graph
input's fixed dimensions, zeroes it before the first token and hands each step's present to the
next as its past. Without the names it never feeds the states.

The layer's convolution and recurrence are onnxruntime's com.microsoft CausalConvWithState and
LinearAttention (deltanet_ops.py), or with targets.onnx.fusions off the torch layer's own parallel
form in standard ONNX ops; its projections are MatMuls (quantized like any other), and the conv
weight, dt_bias and the gated norm stay float32 initializers under their canonical names, A_log
a float32 constant the clean-up folds (-exp(A_log)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.targets.onnx import state_export
from omnic.targets.onnx.conv_state import CONV, PAST_CONV, PRESENT_CONV
from omnic.targets.onnx.mamba2_state import PAST_RECURRENT, PRESENT_RECURRENT, RECURRENT

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

    from omnic.spec import ResolvedSpec

GENAI_TYPE = "qwen3_5_text"  # genai's model type for Qwen3.5's text decoder


def deltanet_layers(decoder: "torch.nn.Module") -> list[int]:
    """Indices of the decoder's gated_deltanet layers (empty: a decoder without any)."""
    return [i for i, block in enumerate(decoder.layers) if block.deltanet is not None]


def has_deltanet(spec: "ResolvedSpec") -> bool:
    """Whether the spec's decoder has gated_deltanet layers (torch-free)."""
    return any(row.attention == "gated_deltanet" for row in spec.model.table)


def export_decoder(decoder: "torch.nn.Module", opset: int, ops: bool = True) -> "ir.Model":
    """`forward_concat` of a decoder with gated_deltanet layers as an unoptimised ONNX model with
    the I/O above; initializers keep the state-dict names.

    With `ops` each such layer's convolution and recurrence is one com.microsoft node
    (deltanet_ops.py); without (the spec's targets.onnx.fusions off: standard ONNX only) the
    torch layer is exported as it computes: the parallel form, a fixed count of [T, T] matrix
    products per call, which any ONNX runtime runs."""
    import torch

    from omnic.targets.onnx.deltanet_ops import TRANSLATIONS, with_onnx_ops

    layers = deltanet_layers(decoder)

    def dummy_states(b: int) -> list[list[torch.Tensor]]:
        states = [decoder.layers[i].deltanet.empty_state(b, torch.float32) for i in layers]
        return [[s[0] for s in states], [s[1] for s in states]]

    entry = state_export.two_state_entry(with_onnx_ops(decoder) if ops else decoder, layers)
    return state_export.export_decoder(decoder, opset, entry, layers, [CONV, RECURRENT],
                                       dummy_states, TRANSLATIONS if ops else None)


# genai_config.json's decoder inputs and outputs besides the KV names: the state name templates
GENAI_INPUTS = {"past_conv_names": PAST_CONV, "past_recurrent_names": PAST_RECURRENT}
GENAI_OUTPUTS = {"present_conv_names": PRESENT_CONV, "present_recurrent_names": PRESENT_RECURRENT}
