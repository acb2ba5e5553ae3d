"""The ONNX target's own passes over the exported graph, and their order.

They run through the shared pass runner (omnic.passes.run_passes) after the model-level passes,
on a `Graph`: the exported onnx_ir model plus what earlier passes found (the weight storage
records, how often each fusion fired). Every pass rewrites the model in place, as onnx-ir's
passes do (`in_place = True`; the runner holds them to it). The manifest lists each pass that ran.

The fusion rules are onnxscript's (`onnxscript.rewriter.ort_fusions`) and omnic's own
(omnic.targets.onnx.rope, .gqa, .window_cache); fusions.py explains each. A rule that does not
match leaves the graph as it was: fusions never change results, only speed (the golden check
proves it on every build).
  ref: https://github.com/onnx/ir-py/blob/main/src/onnx_ir/passes/_pass_infra.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from omnic.passes import PassResult, register_pass

if TYPE_CHECKING:
    import onnx_ir as ir

    from omnic.quant.select import TensorScheme


@dataclass
class Graph:
    """The value of the ONNX pipeline: one exported model, rewritten in place by each pass."""

    model: "ir.Model"
    schemes: "dict[str, TensorScheme]"  # the program's quant plan (Program.schemes())
    accuracy_level: int  # MatMulNBits compute precision (quant.INT8_COMPUTE: why 4)
    opset: int
    producer_version: str
    # canonical tensor name -> how it is stored (onnx::store_weights; pack_qkv updates it)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion_counts: dict[str, int] = field(default_factory=dict)  # fusion -> times it fired


FUSIONS = [
    # RMSNorm first: the skip fusion matches an Add feeding a SimplifiedLayerNormalization.
    "onnx::fuse_rms_normalization",
    "onnx::fuse_skip_rms_normalization",
    # Rotate-half -> a temporary RotaryEmbedding function node; the table rule turns it into
    # onnxruntime's op (it must see the cos/sin gathers, so before any other clean-up).
    "onnx::fuse_rotary_embedding",
    "onnx::fuse_rope_table",
    # Partial rotary (the rotated slice concatenated with the rest) -> one RotaryEmbedding over
    # the whole head: the form the attention pattern expects.
    "onnx::fuse_partial_rope",
    # Attention last: its pattern starts from the com.microsoft RotaryEmbedding nodes.
    "onnx::fuse_gqa",
    # Window-sized caches for sliding layers: only once every layer is known to be fused.
    "onnx::window_caches",
    # Packing needs the GroupQueryAttention nodes (their q/k/v inputs are what gets packed) and
    # the storage records (it packs MatMulNBits and updates their records).
    "onnx::pack_qkv",
    # Rotary function nodes left unconverted are inlined back to plain ops here.
    "onnx::cleanup",
    # After every fusion: the optional outputs the fused normalizations connected.
    "onnx::drop_unused_outputs",
]


def pipeline(fusions: bool) -> list[str]:
    """The ONNX pass list; `fusions` is the spec's `targets.onnx.fusions`."""
    return [
        # First, on the graph as exported: each weight is found by its initializer name and use
        # (MatMul, Gather) before the clean-up folds or renames anything.
        "onnx::store_weights",
        # Constant folding, dead code, common subexpressions (weights untouched): the fusion
        # patterns are written for the folded graph.
        "onnx::cleanup",
        *(FUSIONS if fusions else []),
        # After the optimizers, which would fold the fp16 Casts back to fp32.
        "onnx::narrow_floats",
        # Last: opset imports, producer, IR version.
        "onnx::finalize",
    ]


class _InPlace:
    """Shared shape of the ONNX passes: in place, nothing to require or ensure."""

    in_place = True

    def requires(self, graph: Graph) -> None:
        pass

    def ensures(self, graph: Graph) -> None:
        pass


@register_pass("onnx::store_weights")
class StoreWeights(_InPlace):
    """Every planned matrix in its storage form: MatMulNBits, GatherBlockQuantized, fp16."""

    def call(self, graph: Graph) -> PassResult:
        from omnic.targets.onnx import quant

        graph.records = quant.store_weights(graph.model, graph.schemes,
                                            accuracy_level=graph.accuracy_level)
        return PassResult(graph, changed=bool(graph.records))


@register_pass("onnx::cleanup")
class Cleanup(_InPlace):
    """Shape inference, constant folding, dead code and CSE, weights left untouched."""

    def call(self, graph: Graph) -> PassResult:
        from omnic.targets.onnx import fusions

        before = len(graph.model.graph)
        fusions.cleanup(graph.model)
        return PassResult(graph, changed=len(graph.model.graph) != before)


def _fusion(key: str, rule: Callable[[Graph], int]) -> type:
    """A pass that applies one fusion rule and counts its matches under `key`."""

    class Fusion(_InPlace):
        def call(self, graph: Graph) -> PassResult:
            graph.fusion_counts[key] = count = rule(graph)
            return PassResult(graph, changed=count > 0)

    Fusion.__doc__ = f"Fuse {key.replace('_', ' ')} (see fusions.py); counted as {key!r}."
    return Fusion


def _ort(module: str, function: str) -> Callable[[Graph], int]:
    def rule(graph: Graph) -> int:
        import importlib

        return getattr(importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module}"),
                       function)(graph.model)

    return rule


def _omnic(function: str, with_records: bool = False) -> Callable[[Graph], int]:
    def rule(graph: Graph) -> int:
        from omnic.targets.onnx import fusions, gqa, rope, window_cache

        fn = next(getattr(m, function) for m in (gqa, rope, window_cache, fusions)
                  if hasattr(m, function))
        return fn(graph.model, graph.records) if with_records else fn(graph.model)

    return rule


for _id, _key, _rule in [
    ("onnx::fuse_rms_normalization", "rms_normalization",
     _ort("rms_normalization", "fuse_rms_normalization")),
    ("onnx::fuse_skip_rms_normalization", "skip_rms_normalization",
     _ort("skip_normalization", "fuse_skip_rms_normalization")),
    ("onnx::fuse_rotary_embedding", "rotary_embedding",
     _ort("rotary_embedding", "fuse_rotary_embedding")),
    ("onnx::fuse_rope_table", "rope_table", _omnic("fuse_rope_table")),
    ("onnx::fuse_partial_rope", "partial_rope", _omnic("fuse_partial_rope")),
    ("onnx::fuse_gqa", "group_query_attention", _omnic("fuse_gqa")),
    ("onnx::window_caches", "window_caches", _omnic("use_window_caches")),
    ("onnx::pack_qkv", "pack_qkv", _omnic("pack_qkv", with_records=True)),
    ("onnx::drop_unused_outputs", "unused_outputs_dropped", _omnic("drop_unused_outputs")),
]:
    register_pass(_id)(_fusion(_key, _rule))


@register_pass("onnx::narrow_floats")
class NarrowFloats(_InPlace):
    """fp16/bf16-planned weights as 16-bit initializers behind a Cast, and the storage records
    written into the model's metadata."""

    def call(self, graph: Graph) -> PassResult:
        from omnic.targets.onnx import quant

        quant.narrow_floats(graph.model, graph.records)
        return PassResult(graph, changed=True)


@register_pass("onnx::finalize")
class Finalize(_InPlace):
    """Opset imports, producer name and version, IR version: what onnxruntime checks."""

    def call(self, graph: Graph) -> PassResult:
        from omnic.targets.onnx import export

        export.finalize(graph.model, graph.opset, graph.producer_version)
        return PassResult(graph, changed=True)
