"""GPU device builds of the decoder (`targets.tvm.devices`): OpenCL, Metal, Vulkan.

    device_problems(spec)       pre-flight: a device this TVM has no code generator for, ...
    device_target(kind)         the TVM target of a device (MLC-LLM's generic presets)
    device_pipeline(target)     TVM's generic GPU pipeline + dlight default schedules
    build_device(mod, kind)     tvm.compile of the generic Relax module for that device
    export_device(exe, path)    the library, `decoder.<kind>.so`
    structural_check(exe, kind) what is verifiable here without the GPU (see below), for a
                                build and its library; check_library(path, kind) for a file
    device_source(exe, kind)    the kernels' source; kernel_names(source, kind) their names

A device build takes the same Relax module as the host build (`lowering.to_relax`: one `main`
over a dynamic token count T, weights as inputs, packed weights dequantized in-graph) and
compiles it for a GPU target whose host is this machine's LLVM: the kernels become OpenCL C or
Metal Shading Language source, which is embedded in the host library next to the Relax VM
bytecode and the host-side launch code. The device's driver compiles that source when the
library is loaded (OpenCL `clBuildProgram`, Metal `newLibraryWithSource`).

What is checked here, with no such GPU (and no OpenCL or Metal runtime in the apache-tvm
wheel): the module compiles (every kernel thread-bound: TVM's VerifyMemory passed), the
kernels are present in the device source, and the exported library loads back (dlopen, the
VM executable and host code deserialize, the device module's bytes parse and hold the same
kernels and source). The numbers are never run here: a device build's golden is `not_run`.

The exported library's host code is for this machine's architecture. For a phone, build with
`host=` the device's LLVM triple and export as MLC-LLM does: a tar of objects linked into the
app (`system_lib`), or `tvm.support.ndk.create_shared` for an Android .so.
ref: https://github.com/mlc-ai/mlc-llm/blob/main/python/mlc_llm/support/auto_target.py

Backend libraries are imported inside the functions; this module imports without tvm or torch.
"""

from __future__ import annotations

import logging
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from omnic.constants import Targets
from omnic.targets.base import Problem
from omnic.targets.kv_layout import kv_positions

if TYPE_CHECKING:
    import tvm

    from omnic.spec import ResolvedSpec

_log = logging.getLogger(__name__)

FIELD = "targets.tvm.devices"
KINDS = ("opencl", "metal", "vulkan")  # the spec's vocabulary (omnic/spec/targets.py)

# Each device's TVM target, after MLC-LLM's generic presets ("android:generic" is a bare opencl
# target; "iphone:generic" is metal with these limits). The host is given separately.
_TARGETS: dict[str, dict[str, Any]] = {
    "opencl": {"kind": "opencl"},
    "metal": {"kind": "metal", "max_threads_per_block": 256,
              "max_shared_memory_per_block": 32768, "thread_warp_size": 1},
    "vulkan": {"kind": "vulkan"},
}
# The platforms each device serves, and the alternative to name when it is refused.
_NAMES = {"opencl": "OpenCL", "metal": "Metal", "vulkan": "Vulkan"}
_PLATFORM = {"opencl": "Android", "metal": "iOS/macOS", "vulkan": "Android/Linux"}
_NEAREST = {"opencl": "metal", "metal": "opencl", "vulkan": "opencl"}
# What the runtime calls the device module's source format (the first field of its bytes) and
# how a kernel is declared in that source.
_FORMAT = {"opencl": "cl", "metal": "metal"}
_HANDLE = 3  # kDLOpaqueHandle: a buffer argument of a kernel
# Metal binds at most 31 buffers to a kernel; TVM packs a kernel's scalars into one more.
# ref: https://developer.apple.com/metal/Metal-Feature-Set-Tables.pdf (buffer argument table)
_METAL_BUFFERS = 31
_KERNEL = {"opencl": re.compile(r"^__kernel void (\w+)\(", re.M),  # prototype and definition
           "metal": re.compile(r"^kernel void (\w+)\(", re.M)}


def device_problems(spec: "ResolvedSpec") -> list[Problem]:
    """What the device builds of `spec.targets.tvm.devices` cannot take, before any work.

    Refused: a device the installed apache-tvm has no code generator for (the pip wheel of
    0.27 has OpenCL and Metal, not Vulkan: its SPIR-V backend needs a TVM built with
    USE_VULKAN=ON); a device named twice; and a sliding layer whose cache is a ring (window
    shorter than the context): dlight's Fallback rule aborts on its [heads, window + T, dim]
    kernels (apache-tvm 0.27 cannot fuse those loops: "The padding factor ... is not
    divisible"). Everything the host build refuses (an int8 KV cache, a weight layout quant.py
    cannot pack) the target's own check refuses for every build. Quantization adds nothing
    here: fp16, int8 and int4 (symmetric or not) compile for both devices.
    """
    cfg = spec.targets.tvm
    devices = list(cfg.devices) if cfg is not None else []
    if not devices:
        return []
    tid = Targets.TVM
    problems: list[Problem] = []
    for kind in sorted({k for k in devices if devices.count(k) > 1}):
        problems.append(Problem(tid, FIELD, f"{kind!r} is listed {devices.count(kind)} times; "
                                            "each device is built once"))
    rings = [i for i, n in enumerate(kv_positions(spec, Targets.TVM))
             if n < spec.model.context_length]
    if rings:
        problems.append(Problem(
            tid, FIELD,
            f"layers {rings} keep a ring cache (sliding window shorter than context_length "
            f"{spec.model.context_length}): apache-tvm 0.27's GPU schedules (dlight Fallback) "
            "cannot fuse the loops of its [heads, window + T, head_dim] kernels; nearest: a "
            "window of at least context_length, or the host build alone"))
    try:
        import tvm
    except ImportError:  # the target's own check reports the missing library
        return problems
    for kind in dict.fromkeys(devices):
        why = codegen_missing(kind)
        if why:
            nearest = _NEAREST[kind]
            if codegen_missing(nearest):
                nearest = "the host build alone (llvm)"
            problems.append(Problem(
                tid, FIELD, f"{kind} ({_PLATFORM[kind]}): the installed apache-tvm "
                            f"{tvm.__version__} {why}; nearest: {nearest}"))
    return problems


def codegen_missing(kind: str) -> str | None:
    """Why this apache-tvm cannot generate code for `kind`, or None when it can.

    The registry is asked directly: a TVM without a backend has no `target.build.<kind>`.
    """
    import tvm

    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        extra = " (SPIR-V needs USE_VULKAN=ON)" if kind == "vulkan" else ""
        return f"was built without {_NAMES[kind]} (no target.build.{kind}){extra}"
    return None


def device_target(kind: str, host: str | dict[str, Any] = "llvm") -> "tvm.target.Target":
    """The TVM target of device `kind` with `host` for the launch code and the VM.

    The default host is this machine's LLVM, so the exported library loads here. dlight picks
    its Android-tuned matmul and GEMV schedules for OpenCL when the host triple names android
    (e.g. host={"kind": "llvm", "mtriple": "aarch64-linux-android"}).
    """
    import tvm

    if kind not in _TARGETS:
        raise ValueError(f"unknown device {kind!r}; one of {', '.join(KINDS)}")
    return tvm.target.Target(_TARGETS[kind], host=host)


def device_pipeline(target: "tvm.target.Target") -> Any:
    """TVM's generic GPU pipeline (`relax.backend.gpu_generic`) with three changes.

    1. `FuseTransposeMatmul` before legalization, as in the host build and MLC-LLM: torch's
       `linear` imports as matmul(x, permute_dims(W)); fused, dlight sees one NT matmul that
       reads W row by row, instead of a transpose kernel writing W^T on every call.
    2. dlight's Matmul rule without its Metal simdgroup path: in apache-tvm 0.27 that path
       (`MetalMatmul`) crashes the process inside `Tensorize` (SIGSEGV, which the rule's
       try/except cannot catch), already on a static [1, 128, 256] x [256, 256]^T matmul in
       float16 or float32. Metal gets the tiled shared-memory matmul other GPU targets get.
    3. `RewriteDataflowReshape` is kept only when it succeeds: on a reshape over a symbolic
       axis it cannot split it aborts (see lowering.relax_pipeline); those reshapes stay copies.
    ref: tvm/relax/backend/gpu_generic/pipeline.py (apache-tvm 0.27)
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.gpu_generic import pipeline as gpu
    from tvm.s_tir import dlight as dl

    from omnic.targets.tvm.lowering import guarded_rewrite_reshape

    class PortableMatmul(dl.gpu.Matmul):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if target.kind.name == "metal":
                # The same limits under a kind without the simdgroup path; the schedule uses
                # only threads and shared memory, which Metal has.
                target = tvm.target.Target({**_limits(target), "kind": "opencl"})
            return super().apply(func, target, tunable)

    reshapes = guarded_rewrite_reshape()

    @tvm.transform.module_pass(opt_level=0, name="OmnicGpuPipeline")
    def pipeline(mod: "tvm.IRModule", _ctx: Any) -> "tvm.IRModule":
        legalize = [relax.transform.LegalizeOps(),
                    relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(),
                    relax.transform.FuseOps(),
                    relax.transform.FuseTIR(),
                    # every PrimFunc must be thread-bound for a GPU: Fallback binds what the
                    # rules before it do not match
                    dl.ApplyDefaultSchedule(PortableMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                            dl.gpu.GeneralReduction(), dl.gpu.Fallback())]
        lower = [reshapes if p.info.name == "RewriteDataflowReshape" else p
                 for p in gpu.dataflow_lower_passes(target)]
        with target:
            return tvm.transform.Sequential(gpu.library_dispatch_passes(target)
                                            + [relax.transform.FuseTransposeMatmul()]
                                            + legalize + lower
                                            + gpu.finalize_passes(target))(mod)

    return pipeline


def _limits(target: "tvm.target.Target") -> dict[str, Any]:
    keys = ("max_threads_per_block", "max_num_threads", "max_shared_memory_per_block",
            "thread_warp_size")
    return {k: int(target.attrs[k]) for k in keys if k in target.attrs}


def build_device(mod: "tvm.IRModule", kind: str, opt_level: int = 3,
                 host: str | dict[str, Any] = "llvm") -> tuple[Any, dict[str, Any]]:
    """Compile the decoder's Relax module for GPU `kind`.

    Args:
        mod: `lowering.to_relax`'s module (not modified: TVM's passes return new modules).
        kind: "opencl" or "metal" (what `device_problems` accepts on this TVM).
        opt_level: the spec's `targets.tvm.opt_level`.
        host: the LLVM target of the launch code and the VM (see `device_target`).

    Returns:
        The VM executable and facts about the build: {"kind", "target", "kernels",
        "device_source_bytes", "compile_s"}.

    Raises:
        ValueError: `kind` is not a device this TVM can generate code for.
    """
    import time

    import tvm

    why = codegen_missing(kind) if kind in _TARGETS else f"is not one of {KINDS}"
    if why:
        raise ValueError(f"tvm: cannot build for {kind!r}: apache-tvm {tvm.__version__} {why}")
    target = device_target(kind, host)
    t0 = time.perf_counter()
    with target, tvm.transform.PassContext(opt_level=opt_level):
        executable = tvm.compile(mod, target=target, relax_pipeline=device_pipeline(target))
    facts = {"kind": kind, "target": str(target), "compile_s": round(time.perf_counter() - t0, 2)}
    source = device_source(executable, kind)
    facts.update(kernels=len(kernel_names(source, kind)),
                 device_source_bytes=len(source.encode()))
    _log.info(f"tvm: {kind} build: {facts['kernels']} kernels, "
              f"{facts['device_source_bytes'] / 1024:.0f} KiB of source, {facts['compile_s']} s")
    return executable, facts


def _walk(module: Any) -> Iterator[Any]:
    yield module
    for sub in module.imports:
        yield from _walk(sub)


def _device_module(module: Any, kind: str) -> Any:
    found = [m for m in _walk(module) if m.kind == kind]
    if len(found) != 1:
        raise RuntimeError(f"tvm: expected one {kind} module in the build, found "
                           f"{[m.kind for m in _walk(module)]}")
    return found[0]


def device_source(executable: Any, kind: str) -> str:
    """The kernel source of a device build: one program per kernel (OpenCL C, or Metal
    Shading Language), each after a `// Function: <name>` line."""
    return _device_module(executable.mod, kind).inspect_source()


def kernel_names(source: str, kind: str) -> set[str]:
    """The kernels `source` of device `kind` declares."""
    return set(_KERNEL[kind].findall(source))


def export_device(executable: Any, path: Path) -> list[str]:
    """Write the device build's library (e.g. `decoder.opencl.so`) with the system compiler.

    It holds the VM bytecode, the host launch code (this machine's architecture, see the module
    docstring) and the kernel source. Returns the names of the files written.
    """
    path = Path(path)
    executable.export_library(str(path))
    return [path.name]


def structural_check(executable: Any, kind: str, library: Path | None = None) -> dict[str, Any]:
    """Verify a device build without its GPU; returns what was verified.

    1. In memory: the build holds exactly one `kind` module; its source declares kernels.
    2. `library` (what `export_device` wrote; None: exported to a temporary file) passes
       `check_library`, and the source and kernels it carries are the build's.
    A Relax VM is not constructed (it needs the device's runtime) and nothing is run: the
    golden check is "not_run".

    Raises:
        RuntimeError: any of the above does not hold.
    """
    source = device_source(executable, kind)
    declared = kernel_names(source, kind)
    if not declared:
        raise RuntimeError(f"tvm: the {kind} source declares no kernel")
    with tempfile.TemporaryDirectory(prefix="omnic-tvm-device-") as tmp:
        lib = Path(library) if library is not None else Path(tmp) / f"decoder.{kind}.so"
        if library is None:
            export_device(executable, lib)
        facts, texts = _check_library(lib, kind)
    facts["device_source_bytes"] = len(source.encode())
    if texts and (facts["kernels"] != len(declared) or any(t not in source for t in texts)):
        raise RuntimeError(f"tvm: the {kind} kernels in the library ({facts['kernels']}) are "
                           f"not the build's ({len(declared)})")
    facts.setdefault("kernels", len(declared))  # TVM's own loader: the bytes were not read
    facts.setdefault("extensions", _extensions(source))
    return facts


def check_library(path: Path, kind: str) -> dict[str, Any]:
    """Verify an exported device library (`export_device`'s file) without its GPU.

    1. Loaded with `tvm.runtime.load_module`: the library dlopens, the Relax VM executable
       and the host code deserialize, and `main` is among the VM's functions.
    2. This TVM has no OpenCL/Metal runtime, so the device module's loader
       (`ffi.Module.load_from_bytes.<kind>`) is absent; for this load only, a stand-in takes
       its place and reads the bytes a device runtime would get: the source format, the
       function table (name, argument types, launch-parameter tags of each kernel) and the
       source. The table and the source must name the same kernels; every kernel is bound to
       threads (its launch parameters include threadIdx); on Metal no kernel takes more than
       the 31 buffers Metal binds. When this TVM has the loader, it is used instead and these
       checks of the bytes are skipped (the facts then lack "format" and "function_table").

    Raises:
        RuntimeError: any of the above does not hold.
    """
    return _check_library(Path(path), kind)[0]


def _check_library(path: Path, kind: str) -> tuple[dict[str, Any], list[str]]:
    """(facts, the kernel sources read from the library's bytes; [] with TVM's own loader)."""
    import tvm
    from tvm import relax

    captured: list[bytes] = []
    with _device_loader(kind, captured) as loader:
        loaded = tvm.runtime.load_module(str(path))
    kinds = [m.kind for m in _walk(loaded)]
    if kinds[0] != "relax.VMExecutable" or not loaded.implements_function("vm_load_executable"):
        raise RuntimeError(f"tvm: {path.name} is not a Relax VM executable: {kinds}")
    functions = _vm_functions(relax.VMExecutable(loaded))
    if "main" not in functions:
        raise RuntimeError(f"tvm: the VM executable of {path.name} has no main ({functions})")
    facts: dict[str, Any] = {"kind": kind, "library_bytes": path.stat().st_size,
                             "device_loader": loader, "loaded": True,
                             "vm_functions": functions}
    texts: list[str] = []
    if loader.startswith("stand-in"):
        if len(captured) != 1:
            raise RuntimeError(f"tvm: {path.name} holds {len(captured)} {kind} modules")
        fmt, table, texts = parse_device_blob(captured[0])
        if fmt != _FORMAT[kind]:
            raise RuntimeError(f"tvm: the {kind} module is stored as {fmt!r}, "
                               f"not {_FORMAT[kind]!r}")
        in_source = set().union(*(kernel_names(text, kind) for text in texts))
        if not table or set(table) != in_source:
            raise RuntimeError(f"tvm: the {kind} function table ({len(table)}) and source "
                               f"({len(in_source)}) name different kernels: "
                               f"{sorted(set(table) ^ in_source)[:5]}")
        unbound = sorted(n for n, info in table.items()
                         if not any(t.startswith("threadIdx.") for t in info["launch_params"]))
        if unbound:
            raise RuntimeError(f"tvm: {kind} kernels not bound to threads: {unbound[:5]}")
        # scalars count as one buffer more: TVM packs them into one struct on Metal
        widest = max(info["buffers"] + (info["args"] > info["buffers"])
                     for info in table.values())
        if kind == "metal" and widest > _METAL_BUFFERS:
            raise RuntimeError(f"tvm: a metal kernel takes {widest} buffers, Metal binds "
                               f"{_METAL_BUFFERS}")
        source = "".join(texts)
        facts.update(
            format=fmt, function_table=len(table), kernels=len(table),
            max_kernel_buffers=widest,
            launch_params=sorted({t for info in table.values() for t in info["launch_params"]}),
            extensions=_extensions(source))
    facts["golden"] = "not_run"
    facts["reason"] = (f"no {_NAMES[kind]} device on this host (and no {_NAMES[kind]} runtime in "
                       f"apache-tvm {tvm.__version__}): checked structurally, never run")
    return facts, texts


def _extensions(source: str) -> list[str]:
    """What the device's compiler must offer: `half` needs cl_khr_fp16 (or AMD's) on OpenCL."""
    return sorted(set(re.findall(r"^#pragma OPENCL EXTENSION (\w+) : enable", source, re.M)))


def _vm_functions(vm_exec: Any) -> list[str]:
    """The Relax VM's function names, read from the executable's text form."""
    text = vm_exec.as_text()
    return sorted(set(re.findall(r"^@(\w+):", text, re.M)))


@contextmanager
def _device_loader(kind: str, captured: list[bytes]) -> Iterator[str]:
    """Yield which loader reads the `kind` module: TVM's own, or a stand-in for this load only.

    The stand-in keeps the bytes and returns an empty source module of the same kind; it is
    removed afterwards, so the process is left as it was (a later load fails as before).
    """
    import tvm
    from tvm_ffi.registry import register_global_func, remove_global_func

    name = f"ffi.Module.load_from_bytes.{kind}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        yield "tvm runtime"
        return
    create = tvm.get_global_func("runtime.SourceModuleCreate")

    def stand_in(data: Any) -> Any:
        captured.append(bytes(data))
        return create("", kind)

    register_global_func(name, stand_in)
    try:
        yield "stand-in (no device runtime in this TVM)"
    finally:
        remove_global_func(name)


class _Reader:
    """TVM's dmlc-style stream: little-endian u64 lengths, strings as length + bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RuntimeError("tvm: truncated device module")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8")


def parse_device_blob(data: bytes) -> tuple[str, dict[str, dict[str, Any]], list[str]]:
    """(format, function table, sources) of a serialized OpenCL or Metal module.

    The layout (the `SaveToBytes` of TVM's OpenCL and Metal modules): fmt; the function map as
    a count, then per kernel its name and FunctionInfo (name, argument dtypes as (code u8,
    bits u8, lanes u16), launch-parameter tags, one i32 extra tag per argument); then the
    source: OpenCL one string for all kernels, Metal a map of kernel name -> its own source.
    Every byte must be consumed.
    """
    r = _Reader(data)
    fmt = r.string()
    table: dict[str, dict[str, Any]] = {}
    for _ in range(r.u64()):
        key, name = r.string(), r.string()
        if key != name:
            raise RuntimeError(f"tvm: device function table key {key!r} names {name!r}")
        codes = [r.take(4)[0] for _ in range(r.u64())]  # DLDataType.code; 3: a buffer
        launch = [r.string() for _ in range(r.u64())]
        r.take(4 * r.u64())
        table[name] = {"args": len(codes), "buffers": codes.count(_HANDLE),
                       "launch_params": launch}
    if fmt == "metal":
        sources = {}
        for _ in range(r.u64()):
            name = r.string()
            sources[name] = r.string()
        if set(sources) != set(table):
            raise RuntimeError("tvm: the metal sources are not keyed by the function table")
        texts = list(sources.values())
    else:
        texts = [r.string()]
    if r.at != len(data):
        raise RuntimeError(f"tvm: {len(data) - r.at} unread bytes after the device source")
    return fmt, table, texts
