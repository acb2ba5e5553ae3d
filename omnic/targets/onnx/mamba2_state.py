"""Granite 4's mamba2 layers in the ONNX decoder: their two states as graph inputs and outputs.

A mamba2 layer has no KV cache: it carries the last kernel - 1 inputs of its depthwise
convolution and its recurrent state s (omnic.model.modules.mamba2), both fixed-size. Each is one
graph input and one graph output, named by the layer's index among ALL layers in
onnxruntime-genai's style (the names its model builder gives LFM2's and Qwen3.5's recurrent
layers), beside the attention layers' usual KV names:
  inputs   past.{i}.conv                 [batch_size, conv_channels, kernel - 1]  (mamba2 layers)
           past.{i}.recurrent            [batch_size, heads, head_dim, d_state]   (mamba2 layers)
           past_key_values.{i}.key/value [batch_size, n_kv_heads, past_sequence_length, head_dim]
                                         (attention layers only)
  outputs  present.{i}.conv, present.{i}.recurrent, present.{i}.key/value, likewise
conv_channels = heads * head_dim + 2 * groups * d_state (x | B | C, the convolution's input).
The recurrent state is in omnic's (and Hugging Face's) order [heads, head_dim, d_state]: s maps
C (d_state) to the head's output (head_dim). genai's builder feeds its com.microsoft
LinearAttention a state [heads, d_k, d_v] = [heads, d_state, head_dim] for the same recurrence
(k = B, v = dt x, q = C): the transpose of this one. Only the batch dimension is dynamic.
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (make_inputs_and_outputs: past.%d.conv, past.%d.recurrent)

onnxruntime runs this graph (the golden check, `OnnxRunner`). onnxruntime-genai cannot: 0.18
has no Mamba-2 model type (its builder maps GraniteMoeHybridForCausalLM to attention-only
Granite, its runtime's recurrent caches serve lfm2 and qwen3_5), so the folder gets no
genai_config.json (a config naming a type genai lacks would be a false claim) and the artifact
records genai as not run, with `GENAI_NOT_RUN` as the reason.

The layer stays plain ONNX (MatMul, Conv, CumSum, Exp, Einsum ...), as torch.onnx exports
`Mamba2`: its in_proj and out_proj are the only matrices (int4/int8 as MatMulNBits); the
convolution, dt_bias and the gated norm stay float32 initializers under their canonical names,
A_log and D float32 constants the clean-up folds (-exp(A_log), D as a column).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.targets.onnx import state_export
from omnic.targets.onnx.conv_state import CONV
from omnic.targets.onnx.state_export import StateKind

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

    from omnic.spec import ResolvedSpec

PAST_RECURRENT, PRESENT_RECURRENT = "past.%d.recurrent", "present.%d.recurrent"
RECURRENT = StateKind("past_recurrent", PAST_RECURRENT, PRESENT_RECURRENT)  # s, beside CONV
GENAI_NOT_RUN = ("onnxruntime-genai 0.18 has no Mamba-2 model type (its GraniteMoeHybrid "
                 "support is attention-only), so no genai_config.json is written; "
                 "onnxruntime runs model.onnx")


def mamba2_layers(decoder: "torch.nn.Module") -> list[int]:
    """Indices of the decoder's mamba2 layers (empty: a decoder without any)."""
    return [i for i, block in enumerate(decoder.layers) if block.ssm is not None]


def has_mamba2(spec: "ResolvedSpec") -> bool:
    """Whether the spec's decoder has mamba2 layers (torch-free)."""
    return any(row.attention == "mamba2" for row in spec.model.table)


def export_decoder(decoder: "torch.nn.Module", opset: int) -> "ir.Model":
    """`forward_concat` of a decoder with mamba2 layers as an unoptimised ONNX model with the
    I/O above; initializers keep the state-dict names."""
    import torch

    ssm = mamba2_layers(decoder)

    def dummy_states(b: int) -> list[list[torch.Tensor]]:
        states = [decoder.layers[i].ssm.empty_state(b, torch.float32) for i in ssm]
        return [[s[0] for s in states], [s[1] for s in states]]

    return state_export.export_decoder(decoder, opset,
                                       state_export.two_state_entry(decoder, ssm), ssm,
                                       [CONV, RECURRENT], dummy_states)


def empty_states(session: Any) -> dict[str, np.ndarray]:
    """Batch-1 zero mamba2 states (past.{i}.recurrent; the conv states come from
    conv_state.empty_states) of an onnxruntime session: the states before the first token."""
    return state_export.empty_states(session, ".recurrent")
