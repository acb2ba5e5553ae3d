"""Core ML lowering, step one: the stateful torch wrapper, torch.export and `ct.convert`.

The omnic `Decoder` keeps its static KV cache outside the module and returns updated copies
(`index_copy` at `input_pos`). Core ML wants the cache *inside* the model as state (iOS18
`StateType`): coremltools turns every torch buffer that the exported program mutates into a
Core ML state (`read_state` ... `coreml_update_state`).
  ref: https://apple.github.io/coremltools/docs-guides/source/stateful-models.html
`StatefulDecoder` does exactly that: one fp16 buffer per layer for keys and one for values, the
decoder's out-of-place update copied back into them.

I/O (batch 1):
    input_ids  int32 [1, T]       the new tokens, 1 <= T <= context_length (prefill or decode)
    input_pos  int32 [T]          their positions (where the cache is written, what they attend to)
    logits     fp32  [1, T, vocab]
    k_cache_{i}, v_cache_{i}      states fp16 [1, n_kv_heads, L_i, head_dim]; L_i is
                                  `Decoder.cache_lengths()[i]`: context_length, or a sliding
                                  layer's window when shorter (a ring, position p in slot p % w)
    a short_conv layer (LFM2):    k_cache_{i} fp16 [1, d_model, kernel - 1], no v
    a mamba2 layer (Granite 4):   k_cache_{i} fp16 [1, conv_channels, kernel - 1] (convolution)
                                  and v_cache_{i} fp16 [1, heads, head_dim, d_state] (recurrent),
                                  both static, rewritten whole each call
    a gated_deltanet layer        k_cache_{i} fp16 [1, conv_channels, kernel - 1] (convolution)
    (Qwen3.5):                    and v_cache_{i} fp16 [1, value_heads, key_dim, value_dim]
                                  (recurrent), likewise

The token count is a range (1..context_length) whose default shape is 1: Core ML runs a
range-flexible model on the Neural Engine only at its default shape, so decode steps (T=1) can
use the ANE while prefill runs on GPU/CPU. Enumerated shapes would put a few prefill lengths on
the ANE too, but Core ML enumerates the shapes of one input only, and this model has two.
  ref: https://developer.apple.com/forums/thread/724930 (Apple engineer on range flexibility)
  ref: https://github.com/pytorch/executorch/issues/9632 (enumerated shapes: single input)

`input_pos` instead of a `causal_mask` input: the decoder builds its causal / sliding-window mask
from positions, so the mask cannot disagree with the cache slots written (coremltools' toy
example passes a mask; the ExecuTorch Llama export passes `input_pos` as here).
  ref: https://github.com/pytorch/executorch/blob/main/examples/models/llama/llama_transformer.py

Core ML states are fp16 only (coremltools casts any other buffer dtype to fp16 with a warning), so
the buffers are fp16 here already: the torch wrapper then computes what the artifact computes,
and the fp32-compute artifact is still fp32 everywhere except the KV cache.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from collections.abc import Collection

    import torch

_log = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
INPUT_POS = "input_pos"
LOGITS = "logits"
DECODER_ATTR = "model"  # the wrapped decoder's attribute: parameters export as p_model_<name>


def state_names(n_layers: int, conv: "Collection[int]" = ()) -> list[str]:
    """Names of the Core ML states (torch buffers), keys first: k_cache_0.., v_cache_0... A
    short_conv layer i (in `conv`) keeps its convolution state in k_cache_i and has no v; a
    mamba2 or gated_deltanet layer has both (its convolution state and its recurrent state)."""
    return ([f"k_cache_{i}" for i in range(n_layers)]
            + [f"v_cache_{i}" for i in range(n_layers) if i not in conv])


def deployment_target(name: str) -> Any:
    """`ct.target.<name>` for a spec's `targets.coreml.deployment_target` (iOS18, macOS15, ...)."""
    import coremltools as ct

    return getattr(ct.target, name)


def compute_units(name: str) -> Any:
    """`ct.ComputeUnit` for a spec's `targets.coreml.compute_units` (all, cpu_and_ne, ...)."""
    import coremltools as ct

    return ct.ComputeUnit[name.upper()]


def compute_precision(name: str) -> Any:
    import coremltools as ct

    return {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}[name]


def make_wrapper(decoder: "torch.nn.Module", cache_dtype: "torch.dtype | None" = None
                 ) -> "torch.nn.Module":
    """A `StatefulDecoder` around `decoder` (shares its parameters; never modifies them).

    Args:
        decoder: an omnic `Decoder`.
        cache_dtype: dtype of the KV buffers; float16 (the default) is what Core ML stores, and
            float32 exists for tests that compare the wrapper bit-for-bit with the reference.
    """
    import torch

    cache_dtype = torch.float16 if cache_dtype is None else cache_dtype

    class StatefulDecoder(torch.nn.Module):
        """`forward(input_ids [1, T], input_pos [T]) -> logits [1, T, V]`, KV cache in buffers."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            setattr(self, DECODER_ATTR, inner)
            self.n_layers = inner.config.n_layers
            self.conv = {i for i, b in enumerate(inner.layers) if b.conv is not None}
            # the layers with a convolution and a recurrent state (mamba2, gated_deltanet)
            self.ssm = {i for i, b in enumerate(inner.layers)
                        if b.ssm is not None or b.deltanet is not None}
            k, v = inner.empty_cache(batch=1, dtype=cache_dtype)  # a ring for a short window
            self.empty = v  # a short_conv layer's v: an empty placeholder, not a state
            caches = {f"k_cache_{i}": k[i] for i in range(self.n_layers)}
            caches.update({f"v_cache_{i}": v[i] for i in range(self.n_layers)})
            for name in state_names(self.n_layers, self.conv):  # the states' order
                self.register_buffer(name, caches[name])

        def caches(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            k = [getattr(self, f"k_cache_{i}") for i in range(self.n_layers)]
            v = [torch.zeros_like(self.empty[i]) if i in self.conv else
                 getattr(self, f"v_cache_{i}") for i in range(self.n_layers)]
            return k, v

        def reset(self) -> None:
            for name in state_names(self.n_layers, self.conv):
                getattr(self, name).zero_()

        def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            k, v = self.caches()
            logits, new_k, new_v = getattr(self, DECODER_ATTR)(input_ids, input_pos, k, v)
            # In-place copy into the buffers: torch.export records a BUFFER_MUTATION, which
            # coremltools lowers to coreml_update_state of the whole (scattered) cache. A
            # mamba2 or gated_deltanet layer's states are reshaped to the buffers' static
            # shapes first: a state's update must have the state's shape, and coremltools
            # leaves sizes symbolic that are not (the batch of mamba2's einsum; the last
            # kernel - 1 columns of a gated_deltanet layer's [state | T tokens] convolution
            # input, a slice whose start depends on T).
            for i in range(self.n_layers):
                if i in self.ssm:
                    k[i].copy_(new_k[i].reshape(k[i].shape))
                    v[i].copy_(new_v[i].reshape(v[i].shape))
                    continue
                k[i].copy_(new_k[i])
                if i not in self.conv:
                    v[i].copy_(new_v[i])
            return logits

    return StatefulDecoder(decoder).eval()


def export(wrapper: "torch.nn.Module", context_length: int) -> Any:
    """torch.export of the wrapper with a dynamic token count 1..context_length (ATen dialect)."""
    import torch
    from torch.utils._sympy.value_ranges import ValueRanges

    t = min(4, context_length)
    ids = torch.zeros(1, t, dtype=torch.int64)
    pos = torch.arange(t, dtype=torch.int64)
    # Dim.DYNAMIC, not a named Dim: a ring layer attends over [ring + T] keys, whose GQA expand
    # adds a guard true for every T that export's solver cannot prove (Min(a*T + b,
    # 2*(a*T + b)) == a*T + b) and a named Dim reports as a violation. The range is checked
    # below instead, so a real specialisation on T still fails here.
    tokens = torch.export.Dim.DYNAMIC(min=1, max=context_length)
    with torch.no_grad():
        ep = torch.export.export(
            wrapper, (ids, pos), dynamic_shapes={INPUT_IDS: {1: tokens}, INPUT_POS: {0: tokens}},
            strict=False,
        )
        for symbol, r in list(ep.range_constraints.items()):
            if int(r.lower) > 2 or int(r.upper) < context_length:
                raise RuntimeError(f"coreml: the exported decoder takes {r.lower}..{r.upper} "
                                   f"tokens ({symbol}), not 1..{context_length}: it "
                                   "specialises on the token count")
            # torch numbers a dynamic size from 2 (0 and 1 are its specialised values) and a
            # DYNAMIC dim keeps that; coremltools turns this range into the inputs' RangeDim,
            # whose lower bound is the default shape: one token, as a named Dim(min=1) records.
            ep.range_constraints[symbol] = ValueRanges(1, r.upper)
        # coremltools converts the ATen dialect; decompositions must have run.
        # ref: coremltools/converters/_converters_entry.py ("Run '.run_decompositions({})'")
        ep = ep.run_decompositions({})
    wrapper.reset()  # export may have traced through the in-place copies
    return ep


_REGISTERED = False


def register_missing_ops() -> None:
    """Teach coremltools' torch frontend (9.0) the ATen ops the decoder uses that it lacks or
    gets wrong.

    - `index_copy(x, dim, index, src)` writes src's slices at `index` along `dim`: exactly MIL
      `scatter(data=x, indices=index, updates=src, axis=dim, mode="update")`.
      ref: https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html
      (iOS17 scatter: updates have data's shape with `axis` replaced by len(indices))
    - `aten::__and__.Tensor` (the sliding-window mask `causal & in_window`): the torch.export
      frontend looks it up as "__and__" while coremltools registers the bool `and` converter
      only under "and"/"bitwise_and"; the same converter is registered under the missing name.
      ref: coremltools/converters/mil/frontend/torch/internal_graph.py (sanitize_op_kind keeps
      the underscores of "aten::__and__.tensor") and ops.py (bitwise_and, bool inputs only)
    - `ones_like(x, dtype=torch.bool)` (a ring layer's "the new keys are all held" mask): from
      iOS16 on the stock converter fills with 1.0 and drops the dtype, so the mask became float
      and `__and__` refused it. The stock result is cast to the requested dtype.
      ref: coremltools/converters/mil/frontend/torch/ops.py (ones_like: `fill_like(value=1.0)`)
    - `index_select(x, dim, index)` (a ring's refill) is MIL `gather`, which takes int indices
      only, while the frontend may hand them over float (ExecuTorch's Core ML delegate: its
      `where` promotes the slot arithmetic to fp32): such indices are cast to int32, exactly
      (slot numbers are small integers).
    - `cumsum(x, dim)` with a negative dim other than -1 (a mamba2 layer's segment sums run
      along dim -2): MIL's cumsum takes axis in [-1, rank - 1] only, and the stock converter
      passes dim unchanged, so such a dim is counted from the front.
      ref: coremltools/converters/mil/mil/ops/defs/iOS15/tensor_operation.py (cumsum)
    - `eye(n)` with a symbolic n (the identity a gated_deltanet layer's triangular inverse starts
      from, T x T): the stock converter folds np.eye(n) into a constant and raises when n is
      only known at run time. Such an eye is built from the run-time n as
      cast(range(n)[:, None] == range(m)[None, :]), in fp32 as the stock constant is (the fp16
      pass casts it with the rest).
      ref: coremltools/converters/mil/frontend/torch/ops.py (eye: `np.eye(n)`)
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import (
        NUM_TO_DTYPE_STRING, _get_inputs, _get_kwinputs,
    )
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY as registry,
    )
    from coremltools.converters.mil.mil import types

    def index_copy(context, node):  # noqa: ANN001 - coremltools' converter signature
        x, dim, index, src = _get_inputs(context, node, expected=4)
        axis = int(dim.val) + (x.rank if int(dim.val) < 0 else 0)
        if index.dtype != types.int32:
            index = mb.cast(x=index, dtype="int32")
        if src.dtype != x.dtype:  # the decoder casts k/v to the cache dtype; the frontend may
            # hold the fp16 state as fp32 at this point (the fp16 pass removes the casts later)
            src = mb.cast(x=src, dtype=types.builtin_to_string(x.dtype))
        context.add(mb.scatter(data=x, indices=index, updates=src, axis=axis, mode="update",
                               name=node.name))

    known = registry.name_to_func_mapping
    stock_ones_like = known["ones_like"]

    def ones_like(context, node):  # noqa: ANN001 - coremltools' converter signature
        stock_ones_like(context, node)
        dtype = _get_kwinputs(context, node, "dtype", default=[None])[0]
        want = None if dtype is None or dtype.val is None else NUM_TO_DTYPE_STRING[dtype.val]
        res = context[node.name]
        if want is not None and types.builtin_to_string(res.dtype) != want:
            context.add(mb.cast(x=res, dtype=want, name=f"{node.name}_as_{want}"), node.name,
                        override=True)

    def index_select(context, node):  # noqa: ANN001 - coremltools' converter signature
        x, axis, index = _get_inputs(context, node, expected=3)
        if not types.is_int(index.dtype):
            index = mb.cast(x=index, dtype="int32")
        context.add(mb.gather(x=x, indices=index, axis=axis, name=node.name))

    stock_cumsum = known["cumsum"]

    def cumsum(context, node):  # noqa: ANN001 - coremltools' converter signature
        inputs = _get_inputs(context, node, min_expected=2)
        x, dim = inputs[0], inputs[1]
        if dim.val is None or int(dim.val) >= -1:
            return stock_cumsum(context, node)
        dtype = inputs[2] if len(inputs) > 2 else _get_kwinputs(
            context, node, "dtype", default=[None])[0]
        if dtype is not None and dtype.val is not None:
            x = mb.cast(x=x, dtype=NUM_TO_DTYPE_STRING[dtype.val])
        elif types.is_bool(x.dtype):
            x = mb.cast(x=x, dtype="int32")
        context.add(mb.cumsum(x=x, axis=int(dim.val) + x.rank, name=node.name))
        return None

    stock_eye = known["eye"]

    def eye(context, node):  # noqa: ANN001 - coremltools' converter signature
        inputs = _get_inputs(context, node, min_expected=1)
        n = inputs[0]
        m = inputs[1] if node.kind == "eye.m" else n
        if n.val is not None and m.val is not None:
            return stock_eye(context, node)
        rows, cols = (mb.range_1d(start=0, end=size, step=1) for size in (n, m))
        same = mb.equal(x=mb.expand_dims(x=rows, axes=[1]), y=mb.expand_dims(x=cols, axes=[0]))
        context.add(mb.cast(x=same, dtype="fp32", name=node.name))
        return None

    if "index_copy" not in known:
        registry.set_func_by_name(index_copy, "index_copy")
    if "__and__" not in known:
        registry.set_func_by_name(known["bitwise_and"], "__and__")
    registry.set_func_by_name(ones_like, "ones_like")
    registry.set_func_by_name(index_select, "index_select")
    registry.set_func_by_name(cumsum, "cumsum")
    registry.set_func_by_name(eye, "eye")
    _fix_inplace_pass()
    _REGISTERED = True


def _fix_inplace_pass() -> None:
    """Replace coremltools 9.0's `common::canonicalize_inplace_pattern` (which moves each state
    update right after the op that computes its value) with a copy without its two faults:

    - it anchors a moved update before the op that followed the value's op *when the pass
      started*; when that op was itself an update the pass had already moved (and removed), the
      insertion raises KeyError. A mamba2 layer's two state values are computed one after the
      other and their updates follow both, so its second update always met this. Here the
      anchor is the op that follows now.
    - it opens the value op's scopes for the new update, and an op that two graph passes made
      carries two COREMLTOOLS_GRAPH_PASS entries, which `mb.scope` refuses ("scope cannot have
      len > 1"); the latest pass is kept.
    Where the stock pass does not raise, this one makes exactly its changes.
      ref: coremltools/converters/mil/mil/passes/defs/optimize_state.py
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.defs.optimize_state import (
        canonicalize_inplace_pattern as stock,
    )
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    def transform(self, op, block, block_operation_list) -> None:  # noqa: ANN001
        if op.op_type in ("read_state", "coreml_update_state"):
            return
        for update in self._try_find_child_coreml_update_state_ops(op):
            ops = list(block.operations)
            before_op = ops[ops.index(op) + 1]
            scopes = [ScopeInfo(source=source, data=data[-1:] if
                                source == ScopeSource.COREMLTOOLS_GRAPH_PASS else data)
                      for source, data in op.scopes.items()]
            with mb.scope(*scopes):
                moved = mb.coreml_update_state(state=update.state, value=update.value,
                                               before_op=before_op)
            if block.try_replace_uses_of_var_after_op(
                    anchor_op=update, old_var=update.outputs[0], new_var=moved):
                block.remove_ops([update])

    fixed = type(stock.__name__, (stock,), {"_try_match_and_transform_pattern": transform})
    register_pass(namespace="common", override=True)(fixed)


# coremltools 9.0's `common::canonicalize_inplace_pattern` aborts on a ring cache's update at
# fp16 ("COREMLTOOLS_GRAPH_PASS scope cannot have len > 1. Got ['add_fp16_cast',
# 'add_int16_cast']": the gathered ring's ops carry two passes' scopes). It only reorders state
# updates into the in-place form; without it each ring state is still read and written once
# (the structural check), so models with rings convert without that pass.
RING_SKIPPED_PASSES = ("common::canonicalize_inplace_pattern",)


def convert(exported: Any, *, target: str, units: str, precision: str,
            rings: bool = False) -> Any:
    """`ct.convert` of the exported wrapper to an ML Program (not loaded: may run off macOS).

    Inputs, states and their shapes come from the exported program (its Dim and buffers); only
    the output is named and typed here (logits stay fp32 at the interface for either precision).
    `rings`: some layer keeps a ring cache (RING_SKIPPED_PASSES are left out).
    """
    import coremltools as ct
    import numpy as np

    register_missing_ops()
    pipeline = ct.PassPipeline.DEFAULT
    if rings:
        pipeline.remove_passes(list(RING_SKIPPED_PASSES))
    model = ct.convert(
        exported,
        convert_to="mlprogram",
        outputs=[ct.TensorType(name=LOGITS, dtype=np.float32)],
        minimum_deployment_target=deployment_target(target),
        compute_units=compute_units(units),
        compute_precision=compute_precision(precision),
        skip_model_load=True,  # Core ML cannot compile/load off macOS; saving needs no load
        pass_pipeline=pipeline,
    )
    return model
