"""How onnxruntime rounds the inputs of the stored MatMulNBits nodes (the exact reference's
activation rounding, omnic.quant.activations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.quant.activations import ActivationQuant, mlas_int8
from omnic.targets.onnx.quant import INT8_COMPUTE, MS, records_of

if TYPE_CHECKING:
    import onnx_ir as ir


def activation_rounding(model: "ir.Model") -> dict[str, ActivationQuant]:
    """Per canonical weight, how onnxruntime rounds its MatMulNBits input: read from the stored
    nodes, int8 per weight block where a node computes at accuracy_level 4 (`INT8_COMPUTE`)."""
    int8_inputs = {}  # qweight initializer -> block size, of the nodes that round their input
    for node in model.graph:
        if node.op_type != "MatMulNBits" or node.domain != MS:
            continue
        level = node.attributes.get("accuracy_level")
        if level is not None and level.value == INT8_COMPUTE:
            int8_inputs[node.inputs[1].name] = node.attributes["block_size"].value
    return {name: mlas_int8(int8_inputs[rec["qweight"]])
            for name, rec in records_of(model).items()
            if rec["form"] == "MatMulNBits" and rec["qweight"] in int8_inputs}
