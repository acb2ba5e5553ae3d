"""The TVM target's stages: torch.export -> Relax -> compiled library (host and cross).

    flat_entry()        Decoder.forward with the KV cache flattened into positional tensors
    export_decoder()    torch.export with a dynamic token count T (1..context_length)
    to_relax()          tvm.relax.frontend.torch.from_exported_program, weights kept as inputs
    op_histogram()      Relax operator counts of `main` before any lowering
    relax_pipeline()    TVM's CPU pipeline + transpose-matmul fusion + a vectorised NT matmul
    build()             tvm.compile with that pipeline under the spec's opt_level
    export_host()       a shared library for this machine (`export_library` with the system cc)
    export_cross()      the same module compiled for a target triple, as a tar of object files

Backend libraries (torch, tvm) are imported inside the functions.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    import tvm

_log = logging.getLogger(__name__)

# Lines the Relax frontend and TVM print on stderr that carry no information for the user:
# IndexPut's notes on broadcast indices are printed for every cache write (2 per layer); the
# fully broadcast form is what `_index_put` below emits on purpose.
_NOISE = (
    re.compile(r"IndexPut: index tensor \d+ has ndim=\d+ for broadcasting"),
    re.compile(r"IndexPut typically expects values to be 1D"),
    # take(mode="fast") of the embedding and RoPE tables skips bounds checks; TvmRunner checks
    # token ids and positions before every call instead.
    re.compile(r"Fast mode segfaults when there are out-of-bounds indices"),
    # LLVM codegen ignores the scheduling hint `pragma_scope` that legalized extern ops carry.
    re.compile(r"Unknown pragma pragma_scope"),
)


def flat_entry(decoder: "torch.nn.Module", n_layers: int) -> "torch.nn.Module":
    """`decoder.forward` as forward(tokens, input_pos, k_0..k_{L-1}, v_0..v_{L-1}) ->
    (logits, k_0.., v_0..): the cache stays outside the graph, one VM argument per tensor."""
    from torch import nn

    class FlatDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, tokens, input_pos, *caches):  # type: ignore[no-untyped-def]
            logits, k, v = self.decoder(tokens, input_pos, list(caches[:n_layers]),
                                        list(caches[n_layers:]))
            return (logits, *k, *v)

    return FlatDecoder().eval()


def export_decoder(decoder: "torch.nn.Module", config: Any) -> "torch.export.ExportedProgram":
    """torch.export of the flattened decoder; T (prefill length) is dynamic in [1, context].

    Weights that `quant.apply_packing` parametrized are computed once per call
    (`parametrize.cached`), so a tied embedding is dequantized once, not twice.
    """
    import torch
    from torch.export import Dim
    from torch.nn.utils import parametrize

    ctx, n_layers = config.context_length, config.n_layers
    module = flat_entry(decoder, n_layers)
    example_t = min(4, ctx)  # any size >= 2 keeps T symbolic (torch specialises 0 and 1)
    tokens = torch.zeros((1, example_t), dtype=torch.int64)
    input_pos = torch.arange(example_t, dtype=torch.int64)
    k, v = decoder.empty_cache(batch=1)  # a sliding layer's is a ring of its window
    # Dim.DYNAMIC, not a named Dim: a ring layer attends over [ring + T] keys, whose GQA expand
    # adds a guard true for every T that export's solver cannot prove (Min(a*T + b,
    # 2*(a*T + b)) == a*T + b) and a named Dim reports as a violation. The range is checked
    # below instead, so a real specialisation on T still fails here.
    t = Dim.DYNAMIC(min=1, max=ctx)
    dynamic = ({1: t}, {0: t}, tuple(None for _ in range(2 * n_layers)))
    with torch.no_grad(), parametrize.cached():
        ep = torch.export.export(module, (tokens, input_pos, *k, *v),
                                 dynamic_shapes=dynamic, strict=False)
    for symbol, r in ep.range_constraints.items():  # torch numbers dynamic sizes from 2
        if int(r.lower) > 2 or int(r.upper) < ctx:
            raise RuntimeError(f"tvm: the exported decoder takes {r.lower}..{r.upper} tokens "
                               f"({symbol}), not 1..{ctx}: it specialises on the token count")
    return ep


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hold native stderr (fd 2) while TVM runs; replay every line that is not known noise."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(p.search(line) for p in _NOISE):
                    sys.stderr.write(line + "\n")


def _index_put(node: Any, importer: Any) -> Any:
    """aten.index_put with `None` (whole-axis) indices, as `Tensor.index_copy` decomposes to.

    The stock converter (TVM 0.27) does not pad the index list to the tensor's rank and gives
    every whole axis the same broadcast position, so `cache.index_copy(2, pos, k)` fails
    ("number of index tensors (3) must match data dimensions (4)"). Here each axis gets an index
    tensor shaped to broadcast along its own axis only; the one real index (input_pos, 1-D)
    along its axis. The result is relax.index_put with fully broadcast indices.
    """
    from tvm import relax

    bb = importer.block_builder
    args = importer.retrieve_args(node)
    data, indices, values = args[0], list(args[1]), args[2]
    accumulate = bool(args[3]) if len(args) > 3 else False
    shape = importer.shape_of(data)
    rank = len(shape)
    given = [i for i in indices if i is not None]
    if len(given) != 1 or len(importer.shape_of(given[0])) != 1:
        return importer._index_put(node)  # several advanced indices: the stock semantics
    indices += [None] * (rank - len(indices))
    full = []
    for axis, index in enumerate(indices):
        grid = [1] * rank
        if index is None:
            grid[axis] = shape[axis]
            index = bb.emit(relax.op.arange(relax.prim_value(0), shape[axis], relax.prim_value(1),
                                            "int64"))
        else:
            grid[axis] = importer.shape_of(index)[0]
        full.append(bb.emit(relax.op.reshape(index, grid)))
    return bb.emit(relax.op.index_put(data, relax.Tuple(full), values, accumulate))


def _slice(node: Any, importer: Any) -> Any:
    """aten.slice of a dynamic axis to a length torch knows statically: `input_pos[:1]` and
    `input_pos[-1:]`, where a ring layer computes which position each of its slots holds.

    The stock converter types such a slice [min(1, T)], and a binary op of it with the ring's
    [window] slot indices gets no shape at all (Relax cannot tell which side broadcasts), so
    legalization fails ("emit_te now only supports Tensor that has ShapeExpr shape"). Here the
    slice is typed with torch's static length: a strided_slice of that many elements from the
    start (made non-negative), in bounds by construction. Any other slice: the stock converter.
    """
    from tvm import relax, tirx

    x = importer.env[node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else None
    step = node.args[4] if len(node.args) > 4 else 1
    shape = importer.shape_of(x)
    val = node.meta.get("val")
    axis = dim % len(shape) if shape is not None else dim
    if (val is None or shape is None or step != 1 or not isinstance(start, (int, type(None)))
            or isinstance(shape[axis], tirx.IntImm) or not isinstance(val.shape[dim], int)):
        return importer._slice(node)
    length = int(val.shape[dim])
    begin = start or 0
    if begin < 0:
        begin = shape[axis] + begin
    return importer.block_builder.emit(relax.op.strided_slice(
        x, [axis], [begin], [begin + length], assume_inbound=True))


def to_relax(ep: "torch.export.ExportedProgram") -> tuple["tvm.IRModule", list[str], int]:
    """The Relax module of `ep` with weights as trailing inputs of `main`.

    Returns:
        The module (parameters detached), the parameter targets of `ep` in `main`'s argument
        order, and the number of user inputs that precede them.
    """
    import torch
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    with quiet_stderr():
        mod = from_exported_program(
            ep, keep_params_as_input=True,
            custom_convert_map={"index_put.default": _index_put, "index_put_.default": _index_put,
                                "slice.Tensor": _slice},
        )
    mod, _ = detach_params(mod)  # the values come from omnic's own packed arrays instead
    kinds = torch.export.graph_signature.InputKind
    targets = [s.target for s in ep.graph_signature.input_specs if s.kind == kinds.PARAMETER]
    num_input = int(mod["main"].attrs["num_input"])
    if len(mod["main"].params) - num_input != len(targets):
        raise RuntimeError(
            f"tvm: main takes {len(mod['main'].params) - num_input} weights, the exported "
            f"program has {len(targets)} parameters"
        )
    return mod, targets, num_input


def param_signature(mod: "tvm.IRModule", num_input: int) -> list[tuple[list[int], str]]:
    """(shape, dtype) of each weight argument of `main`, in order."""
    out = []
    for var in mod["main"].params[num_input:]:
        ty = var.ty  # relax.TensorType (struct_info in TVM < 0.27)
        out.append(([int(d) for d in ty.shape.values], str(ty.dtype)))
    return out


def op_histogram(mod: "tvm.IRModule") -> dict[str, int]:
    """How many times each Relax operator is called in `main` (before legalization)."""
    import tvm
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] = counts.get(expr.op.name, 0) + 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return dict(sorted(counts.items()))


def host_target(target: str) -> "tvm.target.Target":
    """The spec's target; a bare "llvm" becomes this machine's CPU (LLVM's host CPU name), as
    `-mcpu=native` would: generic x86-64 has no AVX2 or FMA, and the kernels run half as fast.
    """
    import tvm
    from tvm.target import codegen

    if target.strip() == "llvm":
        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    return tvm.target.Target(target)


def cross_target(triple: str) -> "tvm.target.Target":
    """An LLVM target for `triple` (CPU features left at the triple's defaults: NEON on aarch64)."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mtriple": triple})


_VECTOR = 8  # float32 lanes of one 256-bit register (AVX2; two NEON registers on aarch64)


def _schedule_nt_matmul(func: Any) -> Any | None:
    """Vectorise the reduction of an `NT_matmul` PrimFunc (out[.., j] = sum_k x[.., k] W[j, k]).

    Unscheduled, LLVM keeps the float sum over k scalar (it may not reassociate it). Splitting
    k by 8 and `rfactor`-ing the inner 8 gives 8 independent partial sums over contiguous W,
    which vectorise; the 8 partials are added at the end. The output axis j is parallel.
    Returns None (leave the function as it is) when the pattern or the width does not fit.
    ref: https://tvm.apache.org/docs/reference/api/python/tir/schedule.html (rfactor)
    """
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("NT_matmul")  # raises when the kernel has none
    loops = sch.get_loops(block)
    extent = sch.get(loops[-1]).extent
    if len(loops) < 2 or not isinstance(extent, tirx.IntImm) or int(extent) % _VECTOR:
        return None
    _, inner = sch.split(loops[-1], [None, _VECTOR])
    partial = sch.rfactor(inner, len(loops) - 1)
    sch.vectorize(sch.get_loops(partial)[-1])
    sch.parallel(loops[-2])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def relax_pipeline(stats: dict[str, int] | None = None) -> Any:
    """TVM's CPU pipeline (`relax.backend.cpu_generic`) plus two steps for linear layers.

    1. `FuseTransposeMatmul` before legalization: torch's `linear` imports as
       matmul(x, permute_dims(W)); the stock pipeline materialises W^T on every call and then
       reduces along its strided axis. The fused "NT" matmul reads W row by row.
    2. After fusion, `_schedule_nt_matmul` vectorises each NT matmul's reduction.
    Measured on a 384 -> 1024 linear (1 thread, CPU time): 1.8 ms stock, 0.36 ms with (1),
    0.08 ms with (1) and (2) at T=1; 31 / 11 / 3.2 ms at T=32. The dlight CPU rules (GEMV,
    Reduction) were tried as well and left out: they do not match matmuls over a dynamic T and
    were slower on T=1 kernels.

    Args:
        stats: when given, receives {"nt_matmul_kernels": n, "vectorized": m}.
    """
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="OmnicScheduleNTMatmul")
    def _schedule(mod: "tvm.IRModule", _ctx: Any) -> "tvm.IRModule":
        found = done = 0
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or "NT_matmul" not in gvar.name_hint:
                continue  # FuseTIR names a fused kernel after its parts: fused_NT_matmul_silu...
            found += 1
            try:
                new = _schedule_nt_matmul(func)
            except Exception:  # noqa: BLE001 - an unexpected shape: keep the correct, slow kernel
                new = None
            if new is not None:
                mod[gvar] = new
                done += 1
        if stats is not None:
            stats.update(nt_matmul_kernels=found, vectorized=done)
        return mod

    _reshapes = guarded_rewrite_reshape()

    @tvm.transform.module_pass(opt_level=0, name="OmnicCpuPipeline")
    def _pipeline(mod: "tvm.IRModule", _ctx: Any) -> "tvm.IRModule":
        target = tvm.target.Target.current()
        lower = [_reshapes if p.info.name == "RewriteDataflowReshape" else p
                 for p in cpu.dataflow_lower_passes(target)]
        passes = (cpu.library_dispatch_passes(target)
                  + [relax.transform.FuseTransposeMatmul()]
                  + cpu.legalize_passes(target)
                  + [_schedule]
                  + lower
                  + cpu.finalize_passes(target))
        return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def guarded_rewrite_reshape() -> Any:
    """relax.transform.RewriteDataflowReshape, or the module unchanged where it aborts.

    The pass turns reshape kernels into zero-copy views. Its pattern check aborts (TVM 0.27:
    "The padding factor (T + 4) * 16 is not divisible by T + 4") on a reshape over a symbolic
    axis it cannot split, as a ring layer's GQA expand of its [ring + T] keys is; the module is
    then kept as it is (those reshapes copy). Shared by the CPU and GPU (devices.py) pipelines.
    """
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="OmnicRewriteDataflowReshape")
    def reshapes(mod: "tvm.IRModule", _ctx: Any) -> "tvm.IRModule":
        try:
            return relax.transform.RewriteDataflowReshape()(mod)
        except tvm.error.InternalError as err:
            _log.info(f"tvm: reshapes kept as kernels (RewriteDataflowReshape: "
                      f"{str(err).splitlines()[0][:120]})")
            return mod

    return reshapes


def build(mod: "tvm.IRModule", target: "tvm.target.Target", opt_level: int,
          stats: dict[str, int] | None = None) -> Any:
    """tvm.compile with omnic's Relax pipeline and TVM's default TIR pipeline for `target`."""
    import tvm

    with quiet_stderr(), target, tvm.transform.PassContext(opt_level=opt_level):
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(stats))


def export_host(executable: Any, path: Path) -> None:
    """A shared library loadable with `tvm.runtime.load_module` on this machine."""
    with quiet_stderr():
        executable.export_library(str(path))


def _deterministic_tar(output: str, files: list[str]) -> None:
    """tar of `files` by base name, sorted, with zeroed times and owners (reproducible bytes)."""
    names = [os.path.basename(f) for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate object names in {names}")
    with tarfile.open(output, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, src in sorted(zip(names, files)):
            data = Path(src).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


_deterministic_tar.output_format = "tar"  # type: ignore[attr-defined]


def export_cross(executable: Any, path: Path) -> list[str]:
    """The cross-compiled module as a tar of object files (no cross linker needed).

    Returns the member names (the kernels' object, `lib0.o`, and the packed VM bytecode and
    constants, `devc.o`).
    """
    with quiet_stderr():
        executable.export_library(str(path), fcompile=_deterministic_tar)
    with tarfile.open(path) as tar:
        return tar.getnames()


def link_with_ndk(executable: Any, path: Path) -> bool:
    """When `TVM_NDK_CC` names an Android NDK clang, also link a device .so (ref: TVM's
    `tvm.support.ndk.create_shared`). Returns whether it did."""
    if not os.environ.get("TVM_NDK_CC"):
        return False
    from tvm.support import ndk

    with quiet_stderr():
        executable.export_library(str(path), fcompile=ndk.create_shared)
    return True


def elf_machine(data: bytes) -> str | None:
    """The ELF machine of an object file's header ("AArch64", "x86-64", ...), None if not ELF."""
    if data[:4] != b"\x7fELF":
        return None
    little = data[5] == 1
    machine = int.from_bytes(data[18:20], "little" if little else "big")
    return {3: "x86", 40: "ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}.get(machine,
                                                                                 str(machine))
