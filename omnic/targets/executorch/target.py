"""ExecuTorch target: one .pte with the KV cache inside, for the XNNPACK (or Core ML) delegate.

The program follows what ExecuTorch's own LLM export (`export_llm`) writes, so the stock C++ LLM
runner (`TextLLMRunner`) and the Android/iOS demo apps can drive it:

- `forward(tokens int64 [1, seq], input_pos int64 [1]) -> logits float32 [1, seq, vocab]`, seq
  dynamic in [1, max_seq_len] (a longer prompt is fed in chunks); `input_pos` is the position of
  the first token.
- the KV cache as mutable buffers `k_cache_{i}` / `v_cache_{i}` updated in place; like
  export_llm, their initial state is not serialized (the runtime allocates them zeroed). Two
  graphs, recorded in the artifact's `kv_cache` detail:
  - export_llm's (`llm_graph.py`, the XNNPACK default): [1, context, n_kv, head_dim], written by
    `llama::update_cache` and read by `llama::custom_sdpa`;
  - omnic's generic attention (the Core ML delegate; models with ring caches or soft-capping,
    `llm_graph.why_generic`): [1, n_kv, L_i, head_dim], written by index_put_. L_i is
    `Decoder.cache_lengths()[i]`: context_length, or the window of a sliding layer whose window
    is shorter (a ring, position p in slot p % window, what export_llm's
    `--local_global_attention` makes of such a layer with its RingKVCache; see
    `omnic/targets/kv_layout.py`). A short_conv layer (LFM2) keeps its convolution state
    [1, d_model, kernel - 1] in `k_cache_{i}` instead, copied back whole, and has no v buffer;
    a mamba2 layer (Granite 4) keeps its convolution state [1, conv_channels, kernel - 1] in
    `k_cache_{i}` and its recurrent state [1, heads, head_dim, d_state] in `v_cache_{i}`, both
    copied back whole; so does a gated_deltanet layer (Qwen3.5): [1, conv_channels, kernel - 1]
    and [1, value_heads, key_dim, value_dim].
- constant methods `get_max_seq_len`, `get_max_context_len`, `get_vocab_size`, `get_n_layers`,
  `use_kv_cache`, `use_sdpa_with_kv_cache`, `enable_dynamic_shape`, `get_bos_id`, `get_eos_ids`.
  ref: https://github.com/pytorch/executorch/blob/main/examples/models/llama/export_llama_lib.py
  (`_load_llama_model_metadata`)
- `tokenizer.json` (+ `tokenizer_config.json`) beside the .pte.

Lowering: torch.export → `to_edge_transform_and_lower` with the XNNPACK partitioner →
`to_executorch` with the passes and memory planning of export_llm's `LLMEdgeManager`.
  ref: https://github.com/pytorch/executorch/blob/main/extension/llm/export/builder.py
Quantization: see `omnic/targets/executorch/quant.py`.
"""

from __future__ import annotations

import logging
import copy
import platform
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.constants import Components, Targets
from omnic.spec.layers import state_shapes
from omnic.targets.base import Artifact, Problem, register_target
from omnic.targets.executorch.backend import (
    coreml_options, delegate_of, delegation_summary, missing, partitioners, require_runtime,
    runtime_fixes, runtime_ops,
)
from omnic.targets.executorch.llm_graph import custom_ops_module, why_generic

if TYPE_CHECKING:
    import torch

    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec

_log = logging.getLogger(__name__)

FORWARD = "forward"
# Tokens one `forward` call takes (prefill chunk), export_llm's --max_seq_length default.
MAX_SEQ_LEN = 128


def metadata(
    spec: "ResolvedSpec", bos_id: int | None, eos_ids: list[int], dynamic: bool,
    custom_sdpa: bool = False,
) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads, as export_llm writes them.

    `get_max_seq_len` is the most tokens one `forward` call takes (`max_seq_len`: the runner
    prefills a longer prompt in chunks), `get_max_context_len` the longest sequence (prompt +
    generated); a static-shape program (`enable_dynamic_shape` false) takes one token per call,
    as the runner knows, and keeps get_max_seq_len at the context. Absent ids are left out (the
    runner then asks the tokenizer).
    """
    m = spec.model
    out: dict[str, Any] = {}
    if bos_id is not None:
        out["get_bos_id"] = int(bos_id)
    if eos_ids:
        out["get_eos_ids"] = [int(e) for e in eos_ids]
    out.update({
        "get_max_seq_len": max_seq_len(spec) if dynamic else m.context_length,
        "get_max_context_len": m.context_length,
        "get_n_layers": m.n_layers,
        "get_vocab_size": m.vocab_size,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": custom_sdpa,  # llama::custom_sdpa (llm_graph.py)
        "enable_dynamic_shape": dynamic,
    })
    return out


def _kv_module(decoder: "torch.nn.Module", dtype: "torch.dtype") -> "torch.nn.Module":
    """The decoder with its static KV cache held as mutable buffers (see the module docstring)."""
    import torch

    class KVCacheDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.n_layers = decoder.config.n_layers
            k, v = decoder.empty_cache(batch=1, dtype=dtype)  # a ring for a short window
            # a short_conv layer keeps its state in k_cache_{i} and has no v (an empty
            # placeholder, made in forward: a buffer of no elements is not state)
            self.conv = [b.conv is not None for b in decoder.layers]
            self.empty = v
            for i in range(self.n_layers):
                self.register_buffer(f"k_cache_{i}", k[i], persistent=False)
                if not self.conv[i]:
                    self.register_buffer(f"v_cache_{i}", v[i], persistent=False)

        def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            positions = input_pos[:1] + torch.arange(tokens.shape[1], dtype=torch.int64)
            k = [getattr(self, f"k_cache_{i}") for i in range(self.n_layers)]
            v = [torch.zeros_like(self.empty[i]) if self.conv[i] else
                 getattr(self, f"v_cache_{i}") for i in range(self.n_layers)]
            logits, new_k, new_v = self.decoder(tokens, positions, k, v)
            # The decoder writes its caches out of place (index_copy, which decomposes to
            # index_put); copying back into the buffers makes them mutable state, and
            # `run_reinplace_pass` (see _lower_module) turns the pair into one index_put_.
            # A short_conv layer's new state, and a mamba2 or gated_deltanet layer's two, are
            # copied back whole.
            for i in range(self.n_layers):
                k[i].copy_(new_k[i])
                if not self.conv[i]:
                    v[i].copy_(new_v[i])
            return logits

    return KVCacheDecoder().eval()


def _coreml_fp16(decoder: "torch.nn.Module", quant: Any) -> None:
    """Core ML at fp16 compute precision stores and computes in fp16 (coremltools casts the
    fp32 program): the artifact's precision and reference weights say so."""
    from omnic.quant.reference import fake_quantize

    if quant.dtype != "float32":
        return
    quant.precision = "fp16"
    quant.reference_weights = {n: fake_quantize(p.detach().numpy(), "fp16")
                               for n, p in decoder.named_parameters()}


def _lower_module(module: "torch.nn.Module", spec: "ResolvedSpec", meta: dict[str, Any],
                  dynamic: bool) -> tuple[Any, dict[str, Any]]:
    """torch.export -> edge + delegates -> ExecuTorch program; and the delegation summary."""
    import torch
    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass
    from executorch.exir import (
        EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower,
    )
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    c = max_seq_len(spec)
    tokens = torch.zeros(1, 2 if dynamic else 1, dtype=torch.int64)
    example = (tokens, torch.zeros(1, dtype=torch.int64))
    # Dim.DYNAMIC, not a named Dim: a ring layer attends over [ring + seq] keys, whose GQA
    # expand adds a guard true for every seq that export's solver cannot prove (Min(a*seq + b,
    # 2*(a*seq + b)) == a*seq + b) and a named Dim reports as a violation; _check_seq_range makes
    # sure that no real specialization went through with it.
    shapes = ({1: torch.export.Dim.DYNAMIC(min=1, max=c)}, {0: 1}) if dynamic else None
    with torch.no_grad():
        ep = torch.export.export(module, example, dynamic_shapes=shapes, strict=False)
        if dynamic:
            _check_seq_range(ep, c)
        # two ops the runtime gets wrong, as formulas (runtime_fixes); a graph without them is
        # not traced once more for nothing (to_edge's own run_decompositions unwraps torchao's
        # tensor subclasses either way)
        fixes = runtime_fixes()
        if any(n.target in fixes for n in ep.graph.nodes if n.op == "call_function"):
            ep = ep.run_decompositions(fixes)
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=partitioners(spec),
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
        constant_methods=meta,
    )
    summary = delegation_summary(edge.exported_program().graph_module)
    # Linears left outside a delegate run as one op_linear, not transpose + mm (export_llm's
    # LLMEdgeManager.to_executorch does the same).
    edge = edge.transform([ConvertToLinearPass()])
    program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,  # torchao embeddings -> embedding_byte / 4bit
        # The generic graph's cache write becomes index_put_ into the buffer: without it each
        # layer copies its whole cache twice per call (index_put.out, then the buffer write-back
        # copy_); export_llm's graph writes in place already (llama::update_cache).
        # Experimental in ExecuTorch 1.5; the tests check the cache across calls.
        run_reinplace_pass=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
    ))
    return program, summary


def max_seq_len(spec: "ResolvedSpec") -> int:
    """The most tokens one `forward` call takes: MAX_SEQ_LEN, or the context when shorter.
    ExecuTorch plans every activation of a method for its longest call, so this bounds the
    program's memory: at Qwen2.5-0.5B's 32,768 positions the logits of one whole-context call
    would be 20 GB (151,936 x 32,768 x 4 bytes)."""
    return min(spec.model.context_length, MAX_SEQ_LEN)


def _bound_inverse_levels(decoder: "torch.nn.Module", tokens: int) -> None:
    """A gated_deltanet layer exported with a symbolic token count runs `max_levels` levels of
    its triangular inverse, enough for the whole context (12 at 4,096 positions); one `forward`
    here takes at most `tokens` (max_seq_len), for which ceil(log2(tokens)) levels are exact
    (7 at 128), and each level left out is two T x T matrix products fewer per layer and call.
    """
    for block in decoder.layers:
        if block.deltanet is not None:
            block.deltanet.max_levels = min(block.deltanet.max_levels,
                                            max(1, (tokens - 1).bit_length()))


def _check_seq_range(ep: Any, context_length: int) -> None:
    """Raise unless the exported program takes every token count 1..context_length (torch
    numbers a dynamic size from 2: 0 and 1 are its specialised values, and 1 runs). Unbacked
    symbols (u0: the start position the custom ops read with .item()) are not token counts."""
    for symbol, r in ep.range_constraints.items():
        if str(symbol).startswith("u"):
            continue
        if int(r.lower) > 2 or int(r.upper) < context_length:
            raise RuntimeError(f"executorch: the exported forward takes {r.lower}..{r.upper} "
                               f"tokens ({symbol}), not 1..{context_length}: the decoder "
                               "specialises on the token count")


def _signature(spec: "ResolvedSpec", dtype: str, dynamic: bool, lengths: list[int],
               heads_last: bool = False) -> dict[str, Any]:
    """I/O and state of `forward`; `lengths`: the positions each layer's cache holds;
    `heads_last`: the custom ops' cache layout [1, positions, n_kv, head_dim]. A layer with a
    fixed-size state has its state's shapes instead (see the module docstring)."""
    m = spec.model
    shape = (lambda n: [1, n, m.kv_heads, m.dim_per_head]) if heads_last else (
        lambda n: [1, m.kv_heads, n, m.dim_per_head])
    state: dict[str, list[int]] = {}
    # short_conv: the conv state, no v; mamba2 and gated_deltanet: conv, then recurrent
    fixed = state_shapes(m)
    for i, n in enumerate(lengths):
        for slot, dims in zip(("k_cache", "v_cache"), fixed.get(i) or [shape(n)] * 2):
            state[f"{slot}_{i}"] = dims
    seq = "seq" if dynamic else 1
    return {
        "inputs": {
            "tokens": {"dtype": "int64", "shape": [1, seq]},
            "input_pos": {"dtype": "int64", "shape": [1]},
        },
        "outputs": {"logits": {"dtype": "float32", "shape": [1, seq, m.vocab_size]}},
        "dims": {"seq": [1, max_seq_len(spec)]} if dynamic else {},
        "state": {name: {"dtype": dtype, "shape": dims} for name, dims in state.items()},
    }


def _load_runtime_kernels() -> None:
    """Register with the runtime the kernels the pip wheel's bindings lack until their library is
    loaded: `quantized_decomposed::embedding_byte` / `embedding_4bit`, and export_llm's
    `llama::update_cache` / `llama::custom_sdpa` (libcustom_ops_aot_lib)."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


@register_target(Targets.EXECUTORCH)
class ExecutorchTarget:
    """`.pte` programs for the ExecuTorch runtime (XNNPACK, Core ML or portable kernels)."""

    id = Targets.EXECUTORCH

    def int4_grid(self, spec: "ResolvedSpec") -> str | None:
        """The `omnic.quant.grids` backend whose int4 codes this target stores: calibrated
        methods (GPTQ) round on it. None: the target quantizes from floats its own way."""
        backend = spec.targets.executorch.backend if spec.targets.executorch else "xnnpack"
        return "xnnpack" if backend == "xnnpack" else None

    def cache_inputs(self, spec: "ResolvedSpec") -> tuple[list[str], list[str]]:
        """What the build cache must key this target on (omnic.compiler.cache_keys): the
        targets whose options it reads, and the distributions it runs. The Core ML delegate
        takes `targets.coreml`'s options and coremltools."""
        from omnic.targets.executorch.backend import delegate_of

        if delegate_of(spec) == "coreml":
            return ["executorch", "coreml"], ["executorch", "torchao", "coremltools"]
        return ["executorch"], ["executorch", "torchao"]

    def check(self, spec: "ResolvedSpec") -> list[Problem]:
        """What the backend cannot take, before anything is built (torch-free): a missing
        toolchain (`backend.missing`), and the rules of the shared capabilities table
        (`omnic/targets/executorch/rules.py`, `omnic.targets.rules`), so `omnic validate`
        reports the same problems.
        """
        from omnic.targets.rules import problems

        reason = missing(delegate_of(spec))
        out = [Problem(self.id, "targets.executorch", reason)] if reason else []
        return out + problems(spec, self.id)

    def lower(self, program: "Program", out_dir: Path) -> list[Artifact]:
        """Export, quantize, lower and serialize the decoder; write the tokenizer beside it.

        The pipeline has run `check` on the spec before (a missing toolchain is a Problem there).
        """
        import torch

        from omnic.targets.executorch.quant import quantize_decoder
        from omnic.tokenizer import load_tokenizer

        spec = program.spec
        backend = delegate_of(spec)
        dynamic = backend != "coreml"  # export_llm: "Dynamic shape is not supported with coreml"
        if backend == "coreml" and platform.system() != "Darwin":
            _log.info("executorch: the Core ML delegate lowers here but runs only on macOS/iOS; "
                       "its golden check will be not_run")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        decoder = copy.deepcopy(program.decoder).eval()  # never mutate the program's decoder
        if dynamic:
            _bound_inverse_levels(decoder, max_seq_len(spec))
        quant = quantize_decoder(decoder, program.schemes())
        for form, n in sorted(Counter(quant.forms.values()).items()):
            _log.info(f"executorch: {n} tensor(s) → {form}")
        if backend == "coreml" and coreml_options(spec)["compute_precision"] == "fp16":
            _coreml_fp16(decoder, quant)
        dtype = getattr(torch, quant.dtype)
        generic = why_generic(decoder) if backend == "xnnpack" else f"the {backend} backend"
        module = _kv_module(decoder, dtype) if generic else custom_ops_module(decoder, dtype)
        _log.info("executorch: attention → " + (f"omnic's generic graph ({generic})" if generic
                                                else "llama::update_cache + llama::custom_sdpa"))

        tok = load_tokenizer(spec, program.spec_dir)
        meta = metadata(spec, tok.bos_id, list(tok.eos_ids), dynamic, custom_sdpa=not generic)
        et_program, summary = _lower_module(module, spec, meta, dynamic)
        pte = out_dir / f"{spec.name}.pte"
        pte.write_bytes(et_program.buffer)
        tokenizer_files = [p.name for p in tok.save(out_dir)]

        histogram = Counter(summary["delegated"]) + Counter(summary["not_delegated"])
        kernels = runtime_ops(et_program)
        _log.info(
            f"executorch: {summary['delegated_ops']} of {sum(histogram.values())} ops delegated to "
            f"{backend} in {summary['partitions']} partition(s); not delegated: "
            + (", ".join(f"{k} ×{v}" for k, v in summary["not_delegated"].items()) or "none")
        )
        details = {
            "backend": backend,
            "delegated_ops": summary["delegated_ops"],
            "non_delegated_ops": summary["non_delegated_ops"],
            "delegate_partitions": summary["partitions"],
            "delegates": summary["backends"],  # backend id -> partitions
            "not_delegated": summary["not_delegated"],
            "runtime_ops": kernels,
            "methods": sorted([FORWARD, *meta]),
            "metadata": meta,
            "tokenizer": tokenizer_files,
            "compute_dtype": quant.dtype,
            "kv_cache": f"mutable buffers, static, {quant.dtype}, " + (
                f"[1, n_kv, positions, head_dim] (generic attention: {generic})" if generic else
                "[1, positions, n_kv, head_dim], llama::update_cache + llama::custom_sdpa"),
            "kv_positions": decoder.cache_lengths(),  # per layer; a window: that layer's ring
        }
        if spec.model.tie_embeddings and backend == "xnnpack":
            # The lookup reads the table from the program's constants while XNNPACK packs its own
            # copy for the lm_head matmul; export_llm programs carry the same two copies.
            details["tied_embedding"] = ("stored twice: the lookup table of the embedding op and "
                                         "the lm_head weights packed inside XNNPACK")
        if backend == "coreml":
            details["coreml"] = coreml_options(spec)
            # Not byte-deterministic: ExecuTorch's Core ML model identifier is a uuid4
            # (coreml_preprocess) and the embedded .mlpackage differs between lowerings beyond
            # its UUIDs as well (seen in CI), so no stable digest is recorded; manifests of
            # this variant differ in sha256 between two compiles.
            details["deterministic"] = False
        if quant.dynamic_activations:
            details["activations"] = ("int8 asymmetric per token, quantized at run time inside "
                                      "XNNPACK's quantized linears (8da)")
        return [Artifact(
            component=Components.DECODER,
            target=self.id,
            path=f"{out_dir.name}/{pte.name}",
            signature=_signature(spec, str(dtype).removeprefix("torch."), dynamic,
                                 decoder.cache_lengths(), heads_last=not generic),
            op_histogram=dict(sorted(histogram.items())),
            quantization={"forms": quant.forms} if quant.forms else {},
            details=details,
            precision=quant.precision,
            reference_weights=quant.reference_weights,
            activation_quant=quant.rounding or None,
        )]

    def lower_component(self, program: "Program", name: str, out_dir: Path) -> Artifact:
        """`<component>.pte` beside the decoder (components.py), with the spec's delegate."""
        from omnic.targets.executorch.components import lower_component

        return lower_component(program.components[name], Path(out_dir), program.spec)

    def load(self, artifact: Artifact, build_dir: Path) -> "ExecutorchRunner":
        """The .pte on the ExecuTorch runtime's Python bindings, every method loaded; raises
        NotRunnable without the runtime or its delegate."""
        require_runtime(artifact.details.get("backend", "xnnpack"))
        if artifact.component != Components.DECODER:  # a ComponentRunner
            from omnic.targets.executorch.components import load_component

            return load_component(artifact, build_dir)
        runner = ExecutorchRunner(Path(build_dir) / artifact.path)
        expected = artifact.details.get("metadata")
        if expected is not None and runner.metadata != expected:
            raise RuntimeError(f"{artifact.path}: metadata methods return {runner.metadata}, "
                               f"the build recorded {expected}")
        return runner


class ExecutorchRunner:
    """A .pte on ExecuTorch's Python runtime, behind `omnic.targets.base.Runner`.

    Every method of the program is loaded (the constant ones are executed into `metadata`);
    any that does not load raises. The KV cache lives inside the program, so `reset()` loads the
    program again: fresh mutable buffers, and position 0 (positions not yet written are masked
    out by the decoder, so what a fresh buffer holds is never read).
    """

    def __init__(self, path: Path) -> None:
        import torch  # noqa: F401  (loads libtorch for the bindings)

        _load_runtime_kernels()
        self.path = Path(path)
        self._data = self.path.read_bytes()
        self.metadata: dict[str, Any] = {}
        self.method_names: list[str] = []
        self.reset()
        self.context_length = int(self.metadata.get("get_max_context_len", 0))
        self.dynamic = bool(self.metadata.get("enable_dynamic_shape", True))
        # tokens per call: a dynamic program's get_max_seq_len (a longer prompt goes in chunks,
        # as ExecuTorch's runner prefills it), one for a static-shape program
        self.max_seq_len = int(self.metadata.get("get_max_seq_len", 0) or 1) if self.dynamic \
            else 1

    def reset(self) -> None:
        from executorch.runtime import Runtime

        self._program = Runtime.get().load_program(self._data)
        self.method_names = sorted(self._program.method_names)
        meta: dict[str, Any] = {}
        for name in self.method_names:
            try:
                method = self._program.load_method(name)
            except Exception as err:  # the bindings raise RuntimeError with the ET error code
                raise RuntimeError(
                    f"{self.path.name}: method {name!r} does not load: {err}"
                ) from None
            if method is None:
                raise RuntimeError(f"{self.path.name}: method {name!r} does not load")
            if name != FORWARD:
                meta[name] = _constant(method.execute([]), as_list=name.endswith("_ids"))
        self.metadata = meta
        self._forward = self._program.load_method(FORWARD)
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        t = ids.shape[1]
        if self.context_length and self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens exceeds context_length "
                             f"{self.context_length}")
        chunks = []
        step = self.max_seq_len
        for start in range(0, t, step):
            part = ids[:, start:start + step]
            pos = torch.tensor([self.position], dtype=torch.int64)
            (logits,) = self._forward.execute([part, pos])
            chunks.append(logits[0].to(torch.float32).numpy())
            self.position += part.shape[1]
        return np.concatenate(chunks, axis=0)


def _constant(outputs: Any, as_list: bool = False) -> Any:
    """A constant method's value as a Python scalar, or a list for list-valued ones.

    The bindings return a list of outputs: one per scalar, one per element of a list constant.
    """
    values = [v.item() if hasattr(v, "item") else v for v in outputs]
    return values if as_list or len(values) != 1 else values[0]
