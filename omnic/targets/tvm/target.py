"""TVM target: the decoder through Relax, compiled for the host and cross-compiled for a device.

    check(spec)     what the Relax frontend / LLVM backend cannot take, before any work
    lower(program)  torch.export (dynamic T) -> from_exported_program -> tvm.compile; writes
                    a directory <name>-tvm/ with
                      decoder.so                    host library (Relax VM executable + kernels)
                      decoder.params.safetensors    the weights, packed when quantized
                      decoder.json                  inputs, outputs, weight order, quantization
                      decoder.<triple>.tar          objects for the device (when a triple is set)
    load(artifact)  relax.VirtualMachine on the host library; the KV cache stays as TVM tensors
                    that `main` writes in place

One function `main(tokens[1,T], input_pos[T], k_0..k_{L-1}, v_0..v_{L-1}, *weights) ->
logits[1,T,V]` serves prefill (any T up to context_length) and decode (T=1). Each cache holds
`Decoder.cache_lengths()[i]` positions: context_length, or a ring of the window for a sliding
layer whose window is shorter (omnic/targets/kv_layout.py). The graph is llm_graph.py's: every
packed matrix is read by a kernel that decodes it inside the matmul (kernels/packed_matmul.py),
and each layer's attention is one kernel that writes the new keys and values into its cache in
place (`call_tir_inplace`) and reads only the visible positions (kernels/attention.py).
Weights are graph inputs (`keep_params_as_input`), so the library holds code only and the params
file can be swapped. A packed tensor that is neither a linear's weight nor the embedding table is
dequantized inside the graph (quant.py).

What the frontend takes (each verified on the Relax VM against PyTorch): GQA/MQA, sliding
windows (all or even layers), MoE (dense routing: aten.topk + scatter), qkv bias, qk norm,
layernorm, GELU/GeGLU, Gemma 2 post-norms and soft-caps, tied embeddings.
What it cannot: an int8 KV cache (the cache is a float32 VM argument); a GPU host target
(GPUs are `targets.tvm.devices`: OpenCL and Metal builds of the generic graph with TVM's GPU
schedules, checked structurally, never run here; devices.py); `check` reports these. Encoders
and heads are lowered beside the decoder by `lower_component` (components.py).

On the device (cross build): link the objects with the NDK's clang into a shared library, e.g.
  tar xf decoder.aarch64-linux-android.tar && \
  $NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android24-clang++ -shared -fPIC \
      lib0.o devc.o -o decoder.so
(or set TVM_NDK_CC before compiling and omnic links it), then load it with a TVM runtime built
for Android (`tvm.runtime.load_module` / `Module::LoadFromFile` + `relax.VirtualMachine`) and
feed the same arguments as decoder.json lists, weights read from decoder.params.safetensors.
"""

from __future__ import annotations

import logging
import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.constants import Components, Targets
from omnic.targets.base import Artifact, NotRunnable, Problem, register_target
from omnic.targets import rules
from omnic.targets.tvm.backend import cross_triple, open_vm, require_tvm, tvm_missing

if TYPE_CHECKING:
    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec

_log = logging.getLogger(__name__)

FORMAT = "omnic-tvm-relax-vm/3"  # the layout of decoder.json; bump on any change
# /3: `main` writes the caches in place and returns the logits alone; int4 nibbles in blocks
# (quant.nibble_block). /2: per-layer cache shapes (a sliding layer's ring) and "kv_positions",
# the caches returned; /1: every cache context_length long. /1 and /2 still run.
READS = (FORMAT, "omnic-tvm-relax-vm/2", "omnic-tvm-relax-vm/1")
LIBRARY, PARAMS, DESCRIPTOR = "decoder.so", "decoder.params.safetensors", "decoder.json"


def _problems(spec: "ResolvedSpec") -> list[Problem]:
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import decoder_tensors
    from omnic.targets.tvm.quant import packing_problem

    tid = Targets.TVM
    problems: list[Problem] = rules.problems(spec, tid)
    missing = tvm_missing()
    if missing:
        return problems + [Problem(tid, "targets.tvm", missing)]
    import tvm
    from tvm.target import codegen

    cfg = spec.targets.tvm
    target_str = cfg.target if cfg is not None else "llvm"
    try:
        target = tvm.target.Target(target_str)
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types
        problems.append(Problem(tid, "targets.tvm.target", f"not a TVM target: {err}"))
    else:
        if target.kind.name != "llvm":
            problems.append(Problem(
                tid, "targets.tvm.target",
                f"{target.kind.name!r}: the host build is a CPU (llvm) target; name GPU "
                "targets in targets.tvm.devices (opencl, metal), built beside it",
            ))
    triple, field = cross_triple(spec)
    if triple:
        arch = triple.split("-")[0]
        known = {str(t) for t in codegen.llvm_get_targets()}
        if arch not in known and arch != "arm64":
            problems.append(Problem(tid, field or "targets.tvm.target_triple",
                                    f"TVM's LLVM has no backend for {arch!r} "
                                    f"(has: {sorted(known)})"))
    from omnic.targets.tvm.devices import device_problems

    problems += device_problems(spec)
    if spec.quantization.kv_cache != "none":
        problems.append(Problem(
            tid, "quantization.kv_cache",
            f"{spec.quantization.kv_cache} KV cache is not lowered to TVM (the cache is a float32 "
            "VM argument); nearest supported: none",
        ))
    shapes = {t.name: t.shape for t in decoder_tensors(spec.model)}
    for name, ts in tensor_schemes(spec).items():
        why = packing_problem(shapes[name], ts.scheme, ts.group_size)
        if why:
            nearest = "int8 per channel (group_size null)" if ts.scheme == "int4" else "fp16"
            problems.append(Problem(tid, "quantization", f"{name}: {why}; nearest: {nearest}"))
    return problems


def _signature(config: Any, lengths: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inputs and outputs of `main` (weights aside); "T" is the dynamic token count, `lengths`
    the positions each layer's cache holds (`Decoder.cache_lengths`). The caches are inputs
    that `main` writes in place (the runner keeps them between calls); they are not returned.
    A short_conv layer's k input is its state (`Decoder.empty_cache`) and its v is empty; a
    mamba2 or gated_deltanet layer's k is its convolution state and its v its recurrent state."""
    kv = {f"{kind}_cache.{i}": {"shape": [1, config.n_kv_heads, n, config.head_dim],
                                "dtype": "float32", "written_in_place": True}
          for kind in ("k", "v") for i, n in enumerate(lengths)}
    for i in range(config.n_layers):  # a short_conv layer: its state, and an empty v
        if config.mixer_of(i) == "short_conv":
            kv[f"k_cache.{i}"].update(shape=[1, config.d_model, config.conv_kernel - 1],
                                      holds="short_conv state")
            kv[f"v_cache.{i}"].update(shape=[1, config.d_model, 0], holds="nothing")
        elif config.mixer_of(i) == "mamba2":  # the convolution state, the recurrent state
            heads, head_dim, d_state, groups, kernel, _ = config.mamba2
            channels = heads * head_dim + 2 * groups * d_state
            kv[f"k_cache.{i}"].update(shape=[1, channels, kernel - 1], holds="mamba2 conv state")
            kv[f"v_cache.{i}"].update(shape=[1, heads, head_dim, d_state],
                                      holds="mamba2 recurrent state")
        elif config.mixer_of(i) == "gated_deltanet":  # the same two states, Qwen3.5's
            key_heads, value_heads, key_dim, value_dim, kernel = config.deltanet
            channels = 2 * key_heads * key_dim + value_heads * value_dim
            kv[f"k_cache.{i}"].update(shape=[1, channels, kernel - 1],
                                      holds="gated_deltanet conv state")
            kv[f"v_cache.{i}"].update(shape=[1, value_heads, key_dim, value_dim],
                                      holds="gated_deltanet recurrent state")
    inputs = {"tokens": {"shape": [1, "T"], "dtype": "int64"},
              "input_pos": {"shape": ["T"], "dtype": "int64"}, **kv}
    outputs = {"logits": {"shape": [1, "T", config.vocab_size], "dtype": "float32"}}
    return inputs, outputs


def _device_builds(program: "Program", packed: dict[str, Any], root: Path, opt_level: int,
                   timings: dict[str, float]) -> dict[str, Any]:
    """The GPU builds `targets.tvm.devices` names (devices.py), beside the host library.

    They take the generic graph (lowering.export_decoder: packed weights dequantized in the
    graph, caches passed in and returned), which TVM's GPU scheduling (dlight) binds to
    threads; the CPU kernels of llm_graph.py are not scheduled for a GPU. The weights are the
    params file's, in the order each entry lists. Nothing runs them here: each entry says
    golden `not_run` with the reason, and what the structural check verified.
    """
    from omnic.targets.tvm import devices as D
    from omnic.targets.tvm import lowering as L
    from omnic.targets.tvm.quant import apply_packing, stored_name

    cfg = program.spec.targets.tvm
    kinds = list(cfg.devices) if cfg is not None else []
    if not kinds:
        return {}
    t0 = time.perf_counter()
    decoder = copy.deepcopy(program.decoder).eval()
    apply_packing(decoder, packed)
    mod, targets, _ = L.to_relax(L.export_decoder(decoder, decoder.config))
    weights = [stored_name(t.removeprefix("decoder."), packed) for t in targets]
    timings["export_devices_s"] = time.perf_counter() - t0
    out: dict[str, Any] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        with L.quiet_stderr():
            executable, facts = D.build_device(mod, kind, opt_level)
            (name,) = D.export_device(executable, root / f"decoder.{kind}.so")
        facts.update(D.structural_check(executable, kind, root / name))
        timings[f"compile_{kind}_s"] = time.perf_counter() - t0
        for volatile in ("compile_s", "vm_functions"):  # keep the details deterministic
            facts.pop(volatile, None)
        out[kind] = {"library": name, "weights": weights,
                     "returns": "logits, then every k and v cache (updated)", **facts}
    return out


@register_target(Targets.TVM)
class TvmTarget:
    """Apache TVM Relax, run in the Relax VM."""

    id = Targets.TVM

    def int4_grid(self, spec: "ResolvedSpec") -> str | None:
        """The `omnic.quant.grids` backend whose int4 codes this target stores: calibrated
        methods (GPTQ) round on it. None: the target quantizes from floats its own way."""
        return "omnic"  # omnic's codes, scales rounded to fp16 after the codes are chosen

    def check(self, spec: "ResolvedSpec") -> list[Problem]:
        """Everything the TVM frontend, backend or this lowering cannot take, with reasons."""
        return _problems(spec)

    def lower(self, program: "Program", out_dir: Path) -> list[Artifact]:
        """Export, import, compile; write the library, params and descriptor; never mutates
        `program` (the decoder is copied before its weights are packed)."""
        import tvm
        from safetensors.numpy import save_file

        from omnic.targets.tvm import llm_graph, llm_relax
        from omnic.targets.tvm import lowering as L
        from omnic.targets.tvm.quant import apply_packing, dequantize, pack, precision_of

        spec = program.spec
        cfg = spec.targets.tvm
        target_str = cfg.target if cfg is not None else "llvm"
        opt_level = cfg.opt_level if cfg is not None else 3
        plan = program.schemes()
        config = program.decoder.config
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        decoder = copy.deepcopy(program.decoder).eval()
        state = {k: v.detach().to("cpu").float().numpy() for k, v in decoder.state_dict().items()}
        packed = {name: pack(name, state[name], ts) for name, ts in plan.items()
                  if ts.scheme != "fp32" and name in state}
        generic = llm_graph.pack_modules(decoder, packed)  # the rest: dequantized in the graph
        apply_packing(decoder, {name: packed[name] for name in generic})
        timings["pack_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ep = llm_graph.export(decoder)
        timings["export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mod, num_input, kernel_calls = llm_relax.to_relax(ep)
        timings["import_s"] = time.perf_counter() - t0
        histogram = L.op_histogram(mod)

        weights = llm_graph.call_args(ep, packed, state)
        signature = L.param_signature(mod, num_input)
        if len(signature) != len(weights):
            raise RuntimeError(f"tvm: main takes {len(signature)} weights, the exported program "
                               f"has {len(weights)} parameters")
        for (name, arr), (shape, dtype) in zip(weights.items(), signature):
            if list(arr.shape) != shape or str(arr.dtype) != dtype:
                raise RuntimeError(f"tvm: weight {name} is {arr.dtype}{list(arr.shape)}, main "
                                   f"expects {dtype}{shape}")

        out_dir = Path(out_dir)
        dirname = f"{spec.name}-tvm"
        root = out_dir / dirname
        root.mkdir(parents=True, exist_ok=True)

        t0 = time.perf_counter()
        host = L.host_target(target_str)
        kernels: dict[str, int] = {}
        executable = L.build(mod, host, opt_level, kernels)
        L.export_host(executable, root / LIBRARY)
        timings["compile_host_s"] = time.perf_counter() - t0
        save_file(weights, str(root / PARAMS), metadata={"format": FORMAT})
        (root / PARAMS).chmod(0o644)  # safetensors writes through a private (0600) temp file

        triple, triple_from = cross_triple(spec)
        cross: dict[str, Any] | None = None
        if triple:
            t0 = time.perf_counter()
            device_exe = L.build(mod, L.cross_target(triple), opt_level)
            tar_path = root / f"decoder.{triple}.tar"
            members = L.export_cross(device_exe, tar_path)
            linked = L.link_with_ndk(device_exe, root / f"decoder.{triple}.so")
            timings["compile_cross_s"] = time.perf_counter() - t0
            cross = {"triple": triple, "from": triple_from, "archive": tar_path.name,
                     "members": members, "format": "tar of ELF relocatable objects",
                     "linked_so": f"decoder.{triple}.so" if linked else None,
                     "target": str(L.cross_target(triple))}

        devices = _device_builds(program, packed, root, opt_level, timings)

        c = config.context_length
        lengths = decoder.cache_lengths()
        inputs, outputs = _signature(config, lengths)
        descriptor = {
            "format": FORMAT,
            "function": "main",
            "library": LIBRARY,
            "params": PARAMS,
            "inputs": inputs,
            "outputs": outputs,
            "weights": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                        for n, a in weights.items()],
            "T": {"min": 1, "max": c},
            "context_length": c,
            "n_layers": config.n_layers,
            "kv_positions": lengths,  # per layer; a sliding window shorter than c: its ring
            "vocab_size": config.vocab_size,
            "quantization": {name: p.describe() for name, p in packed.items()},
            "target": str(host),
            "cross": cross,
            "devices": devices,  # GPU builds of the generic graph (their own calling convention)
        }
        (root / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1, sort_keys=True) + "\n")

        files = sorted(p for p in root.iterdir() if p.is_file())
        sizes = {p.name: p.stat().st_size for p in files}
        total = sum(sizes.values())
        lowering_s = sum(timings.values())
        precision = precision_of(packed)
        _log.info(f"tvm: {len(histogram)} Relax op kinds, {sum(histogram.values())} calls; "
                   f"{len(packed)} of {len(state)} tensors packed ({precision}); "
                   f"host {host.kind.name}"
                   + (f", cross {triple} (from {triple_from})" if triple else "")
                   + (f", devices {', '.join(devices)}" if devices else "")
                   + f" -> {dirname}/ ({total / 2**20:.2f} MiB, {lowering_s:.1f} s: "
                   + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in timings.items()) + ")")
        rel = Path(out_dir.name) / dirname if out_dir.name == Targets.TVM else Path(dirname)
        return [Artifact(
            component=Components.DECODER,
            target=Targets.TVM,
            path=str(rel),
            signature={"inputs": inputs, "outputs": outputs},
            op_histogram=histogram,
            quantization={
                "packed": {n: f"{p.scheme} g{p.group} {'sym' if p.symmetric else 'asym'} "
                           f"scales {p.arrays['scale'].dtype}" if "scale" in p.arrays
                           else p.scheme for n, p in packed.items()},
                "weight_bytes": int(sum(a.nbytes for a in weights.values())),
            },
            details={
                "target": str(host),
                "opt_level": opt_level,
                "relax_pipeline": "cpu_generic + FuseTransposeMatmul "
                                  "+ rfactor-vectorized NT matmul",
                "graph": "packed-weight matmul kernels, in-place KV cache attention "
                         "(llm_graph.py)",
                "kernel_calls": kernel_calls,
                "kernels": kernels,
                "target_triple": triple,
                "target_triple_from": triple_from,
                "cross": cross,
                "devices": devices,
                "tvm_version": tvm.__version__,
                "files": sizes,
                "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
                "bytes": total,
                "context_length": c,
                "kv_positions": lengths,
                "dynamic_T": [1, c],
            },
            precision=precision,
            reference_weights={n: dequantize(p) for n, p in packed.items()} or None,
        )]

    def lower_component(self, program: "Program", name: str, out_dir: Path) -> Artifact:
        """`<component>-tvm/` beside the decoder, run by the Relax VM (components.py)."""
        from omnic.targets.tvm.components import lower_component

        return lower_component(program.components[name], Path(out_dir), program.spec)

    def load(self, artifact: Artifact, build_dir: Path,
             num_threads: int | None = None) -> "TvmRunner":
        """A Relax VM runner over the host library.

        Args:
            artifact: what `lower` returned.
            build_dir: the directory `artifact.path` is relative to.
            num_threads: TVM worker threads; None keeps TVM's default (TVM_NUM_THREADS, else
                the number of cores).

        Raises:
            NotRunnable: apache-tvm is missing.
        """
        require_tvm()
        if artifact.component != Components.DECODER:  # a ComponentRunner (components.py)
            from omnic.targets.tvm.components import load_component

            return load_component(artifact, build_dir)
        root = _resolve(Path(build_dir), artifact.path)
        return TvmRunner(root, num_threads=num_threads)


class TvmRunner:
    """`omnic.targets.base.Runner` over a lowered directory: batch 1, static KV cache."""

    def __init__(self, root: Path, num_threads: int | None = None) -> None:
        meta = json.loads((root / DESCRIPTOR).read_text())
        if meta.get("format") not in READS:
            raise ValueError(f"tvm: {root / DESCRIPTOR} has format {meta.get('format')!r}, "
                             f"this omnic reads {' or '.join(map(repr, READS))}")
        built_for = _mcpu(meta.get("target"))
        if built_for is not None:
            from tvm.target import codegen

            here = codegen.llvm_get_system_cpu()
            if built_for != here:  # its kernels may use instructions this CPU lacks
                raise NotRunnable(f"tvm: {root.name} was compiled for the {built_for} CPU, "
                                  f"this one is {here}: compile it here (or cross-compile)")
        if num_threads is not None:
            set_threads(num_threads)
        self.device, self.main, self.weights = open_vm(root, meta)
        self._in_place = meta["format"] == FORMAT  # earlier layouts return the caches
        self.context_length = int(meta["context_length"])
        self.n_layers = int(meta["n_layers"])
        self.vocab_size = int(meta["vocab_size"])
        # per layer: a sliding layer's cache may be a ring of its window (decoder.json's inputs)
        self._cache_shapes = [tuple(meta["inputs"][f"{kind}_cache.{i}"]["shape"])
                              for kind in ("k", "v") for i in range(self.n_layers)]
        self.reset()

    def reset(self) -> None:
        """Zero the cache (fresh TVM tensors) and start again at position 0."""
        import tvm

        self.cache = [tvm.runtime.tensor(np.zeros(shape, dtype=np.float32), self.device)
                      for shape in self._cache_shapes]
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """Append int64 tokens [T]; float32 logits [T, vocab]."""
        import tvm

        ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        t = ids.shape[1]
        if t == 0 or self.position + t > self.context_length:
            raise ValueError(f"position {self.position} + {t} tokens is outside 1..context_length "
                             f"{self.context_length}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:  # the graph's gathers are unchecked
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), "
                             f"got {ids.min()}..{ids.max()}")
        pos = np.arange(self.position, self.position + t, dtype=np.int64)
        out = self.main(tvm.runtime.tensor(ids, self.device), tvm.runtime.tensor(pos, self.device),
                        *self.cache, *self.weights)
        self.position += t
        if self._in_place:  # main wrote the new keys and values into self.cache
            return out.numpy()[0]
        self.cache = list(out[1:])  # /1, /2: the updated cache came back
        return out[0].numpy()[0]


def _mcpu(target: str | None) -> str | None:
    """The CPU a descriptor's host target was compiled for (None: a generic target)."""
    if not target or not target.startswith("{"):
        return None
    return json.loads(target).get("mcpu")


def set_threads(n: int) -> int:
    """Use `n` of TVM's CPU worker threads; returns how many TVM will use.

    TVM sizes its thread pool once, at first use, from TVM_NUM_THREADS (else half the logical
    cores on x86, to skip hyper-threads); later calls can lower the count, not raise it past
    that size. To use more threads, set TVM_NUM_THREADS before the first TVM call.
    """
    import tvm

    os.environ.setdefault("TVM_NUM_THREADS", str(n))  # effective only if the pool is not built
    tvm.get_global_func("runtime.config_threadpool")(1, int(n))  # 1 = kBig: the fast cores
    used = int(tvm.get_global_func("runtime.NumThreads")())
    if used != n:
        _log.info(f"tvm: {used} worker thread(s), not {n}: the pool was sized at first use "
                   "(set TVM_NUM_THREADS before starting)")
    return used


def _resolve(build_dir: Path, rel: str) -> Path:
    path = build_dir / rel
    if path.exists():
        return path
    found = sorted(p for p in build_dir.rglob(Path(rel).name) if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{rel} not found under {build_dir}")
