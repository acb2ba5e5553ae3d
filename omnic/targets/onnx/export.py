"""Export the decoder with the torch.onnx dynamo exporter, in onnxruntime-genai's I/O layout.

The graph's inputs and outputs are named and shaped the way onnxruntime-genai's decoder expects
(its model builder is the reference):
  inputs   input_ids [batch, sequence_length] int64, attention_mask [batch, total_sequence_length]
           int64, position_ids [batch, sequence_length] int64,
           past_key_values.{i}.key/value [batch, n_kv_heads, past_sequence_length, head_dim]
  outputs  logits [batch, sequence_length, vocab] float32,
           present.{i}.key/value [batch, n_kv_heads, total_sequence_length, head_dim]
  ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builders/base.py
       (input_names, output_names)

`finalize` makes the file a pure function of the graph: no exporter metadata or stack traces,
names assigned in topological order, producer "omnic" (two lowerings are byte-identical).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

# Above this many bytes of initializers the weights go to `<model>.data` beside the model, as
# the onnxruntime-genai builder always writes them. Protobuf cannot serialise a message past
# 2 GiB at all, and below that an inline save holds the weights three times at once (the
# in-memory model, the ModelProto, its serialised bytes): 1 GB at Qwen2.5-0.5B int4, the peak
# of the whole compile. External data is written tensor by tensor and read back memory-mapped.
EXTERNAL_DATA_THRESHOLD = 2**27

# Dimension names used by onnxruntime-genai's model builder.
BATCH, SEQ = "batch_size", "sequence_length"
PAST, TOTAL = "past_sequence_length", "total_sequence_length"

# onnxruntime 1.31 reads IR version <= 13 (onnx 1.23 writes 14 by default); opset 21 is IR 10.
# ref: https://onnxruntime.ai/docs/reference/compatibility.html
IR_VERSION_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11}


def io_names(n_layers: int, inputs_embeds: bool = False, hidden: bool = False,
             ) -> tuple[list[str], list[str]]:
    """Graph input and output names, in the exporter's argument order."""
    inputs = ["inputs_embeds" if inputs_embeds else "input_ids", "attention_mask", "position_ids"]
    inputs += [f"past_key_values.{i}.key" for i in range(n_layers)]
    inputs += [f"past_key_values.{i}.value" for i in range(n_layers)]
    outputs = ["logits"]
    outputs += [f"present.{i}.key" for i in range(n_layers)]
    outputs += [f"present.{i}.value" for i in range(n_layers)]
    return inputs, outputs + (["last_hidden_state"] if hidden else [])


def export_decoder(decoder: "torch.nn.Module", opset: int, inputs_embeds: bool = False,
                   hidden: bool = False) -> "ir.Model":
    """The decoder's `forward_concat` as an unoptimised ONNX model (onnx_ir), canonical names.

    Initializers keep the state-dict names (`layers.0.attn.q.weight`), which the weight
    storage pass relies on; no optimizer has run yet. With `inputs_embeds` the graph takes
    float32 inputs_embeds [batch, seq, d_model] in place of input_ids (`forward_concat_embeds`,
    the multimodal decoder); `hidden` adds the output last_hidden_state [batch, seq, d_model].
    """
    import torch

    c = decoder.config
    # Example sizes > 1 everywhere: torch.export specialises dimensions of size 0 or 1.
    b, t, p = 2, 3, 4
    ids = torch.zeros((b, t), dtype=torch.int64)
    if inputs_embeds:
        ids = torch.zeros((b, t, c.d_model))
    mask = torch.ones((b, p + t), dtype=torch.int64)
    pos = torch.arange(p, p + t, dtype=torch.int64)[None].expand(b, t).contiguous()
    kv = (b, c.n_kv_heads, p, c.head_dim)
    past_k = [torch.zeros(kv) for _ in range(c.n_layers)]
    past_v = [torch.zeros(kv) for _ in range(c.n_layers)]
    cache_axes = {0: BATCH, 2: PAST}
    dynamic = {
        ("inputs_embeds" if inputs_embeds else "input_ids"): {0: BATCH, 1: SEQ},
        "attention_mask": {0: BATCH, 1: TOTAL},
        "position_ids": {0: BATCH, 1: SEQ},
        "past_k": [cache_axes] * c.n_layers,
        "past_v": [cache_axes] * c.n_layers,
    }
    inputs, outputs = io_names(c.n_layers, inputs_embeds, hidden)
    # forward_concat(_embeds) as forward, canonical parameter names
    entry = decoder.concat_embeds_entry(hidden) if inputs_embeds else decoder.concat_entry()
    # The exporter prints progress to stdout and warns about each shared dim name; keep it for
    # the error message only.
    model = export_quietly(entry, (ids, mask, pos, past_k, past_v), "the decoder", opset,
                           dynamic_shapes=dynamic, input_names=inputs, output_names=outputs)
    _fix_io_shapes(model, c)
    return model


def _fix_io_shapes(model: "ir.Model", c: Any) -> None:
    """Write the genai symbolic shapes on every graph input and output."""
    import onnx_ir as ir

    cache_in = [BATCH, c.n_kv_heads, PAST, c.head_dim]
    cache_out = [BATCH, c.n_kv_heads, TOTAL, c.head_dim]
    shapes = {"input_ids": [BATCH, SEQ], "attention_mask": [BATCH, TOTAL],
              "position_ids": [BATCH, SEQ], "logits": [BATCH, SEQ, c.vocab_size],
              "inputs_embeds": [BATCH, SEQ, c.d_model],
              "last_hidden_state": [BATCH, SEQ, c.d_model]}
    for v in model.graph.inputs:
        v.shape = ir.Shape(shapes.get(v.name, cache_in))
    for v in model.graph.outputs:
        v.shape = ir.Shape(shapes.get(v.name, cache_out))


def finalize(model: "ir.Model", opset: int, producer_version: str) -> None:
    """Make the model deterministic and loadable by onnxruntime (in place).

    Clears exporter metadata and doc strings (stack traces, file paths, graph signatures), names
    every node and intermediate value by its position in topological order, and stamps producer
    "omnic" with the IR version of the opset.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common

    keep = {k: v for k, v in model.metadata_props.items() if k.startswith("omnic.")}
    common.ClearMetadataAndDocStringPass()(model)
    common.TopologicalSortPass()(model)
    model.metadata_props.clear()
    model.metadata_props.update(dict(sorted(keep.items())))
    model.graph.metadata_props.clear()
    model.producer_name, model.producer_version = "omnic", producer_version
    model.domain, model.doc_string, model.model_version = "", None, 0
    model.graph.name = "omnic_decoder"
    model.ir_version = IR_VERSION_FOR_OPSET.get(opset, 10)
    model.opset_imports[""] = opset
    io = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    io |= set(model.graph.initializers)
    for i, node in enumerate(model.graph):
        node.name = f"{node.op_type}_{i}"
        for j, out in enumerate(node.outputs):
            if out.name == "" and not out.uses():  # an optional output left absent
                continue
            if out.name not in io:
                name = f"{node.op_type.lower()}_{i}" + (f"_{j}" if j else "")
                while name in io:  # a constant folded into an initializer kept the exporter's
                    name = "_" + name  # value name (unsqueeze_35), which may be this one
                out.name = name
    # Symbolic dims inside the graph keep the exporter's names, which are derived from the
    # graph only; intermediate shapes are dropped entirely when they carry torch's symbols.
    def torch_symbol(d: Any) -> bool:  # s26, u1: names torch.export made up
        return isinstance(d, ir.SymbolicDim) and bool(d.value) and d.value[0] in "su" \
            and d.value[1:2].isdigit()

    for node in model.graph:
        for out in node.outputs:
            if out.name not in io and out.shape is not None and any(map(torch_symbol, out.shape)):
                out.shape = None


def save(
    model: "ir.Model", path: Path, external_threshold: int = EXTERNAL_DATA_THRESHOLD
) -> list[Path]:
    """Write `model` to `path`; weights go to `<name>.data` past `external_threshold` bytes.

    Returns:
        The files written (the model, and the external data file when used).
    """
    import onnx_ir as ir

    path = Path(path)
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                if v.const_value is not None)
    if total > external_threshold:
        data = path.name + ".data"
        ir.save(model, path, external_data=data, size_threshold_bytes=1024)
        return [path, path.with_name(data)]
    ir.save(model, path)
    return [path]


def release_weights(model: "ir.Model") -> None:
    """Drop the initializers' data of a saved model (in place): the quantized copy and any
    fp32 weights the exporter held would otherwise live until the lowering returns."""
    for value in model.graph.initializers.values():
        value.const_value = None


def signature(model: "ir.Model") -> dict[str, Any]:
    """Inputs and outputs: name -> {dtype, shape} with symbolic dims as strings."""

    def describe(v: "ir.Value") -> dict[str, Any]:
        dims = [d if isinstance(d, int) else str(d) for d in (v.shape or [])]
        return {"dtype": v.dtype.numpy().name if v.dtype is not None else None, "shape": dims}

    return {"inputs": {v.name: describe(v) for v in model.graph.inputs},
            "outputs": {v.name: describe(v) for v in model.graph.outputs}}


def op_histogram(model: "ir.Model") -> dict[str, int]:
    """op_type counts; contrib ops are qualified by domain (com.microsoft::MatMulNBits)."""
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph)
    return dict(sorted(counts.items()))


def export_quietly(module: "torch.nn.Module", args: tuple, what: str, opset: int,
                   **kwargs: Any) -> "ir.Model":
    """`torch.onnx.export(module, args, dynamo=True, optimize=False)` at `opset` with the
    exporter's stdout chatter and warnings held back (shown only in the error when it fails).

    Args:
        what: what is exported, for the error message ("the vision_encoder").
        kwargs: further torch.onnx.export arguments (input_names, dynamic_shapes, ...).
    """
    import torch

    chatter = io.StringIO()
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")
        torch_log.setLevel(logging.ERROR)  # "torchvision is not installed" and similar
        try:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                        optimize=False, verbose=False, **kwargs)
        except Exception as err:
            raise RuntimeError(f"torch.onnx export of {what} failed: {err}\n"
                               f"{chatter.getvalue()}") from err
        finally:
            torch_log.setLevel(level)
    return program.model
