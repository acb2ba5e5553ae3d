"""GGUF target: one llama.cpp file per spec, in the file type the spec asks for.

    check(spec)     the architecture (formats.gguf_families: what llama.cpp cannot express,
                    each naming its spec field), every tensor's type (quant.py) and the
                    tokenizer, before any work; torch-free
    lower(program)  streams the decoder's tensors into a GGUF (write.py); K-quant mixtures are
                    written in F32 and handed to llama.cpp's own quantizer; the file is then read
                    back to report what it stores and to hand the golden check the weights
                    exactly as stored (artifact.reference_weights)
    load(artifact)  llama-cpp-python; any llama.cpp warning while loading is a failure
    lower_component the vision encoder, written as llama.cpp's mmproj beside the decoder and run
                    with libmtmd (mmproj.py, mmproj_runtime.py); other modalities are pre-flight
                    problems

Types: `targets.gguf.file_type: auto` takes the type of `quantization.weights` (int4 g32 -> Q4_0,
asymmetric -> Q4_1, int8 -> Q8_0, fp16 -> F16, ...); an explicit file type sets the matrices'
default instead. Either way the spec's per-tensor overrides are honoured (an int8 embedding is
Q8_0, also inside an F32 or Q4_K_M file), 1-D tensors and the MoE router stay F32 as in
llama.cpp, and `artifact.precision` is the coarsest thing stored (the file type, a coarser
override, or the q8_0 KV cache of `kv_cache: int8`).

The pieces: omnic.formats.gguf_families (architecture), gguf_arch (names, layouts) and
gguf_hparams (keys), quant.py (types, quantizers), omnic.formats.gguf_vocab (tokenizer.ggml.*),
write.py (streaming writer, read-back), runtime.py (llama-cpp-python runner with the log
captured), backend.py (what is missing on this host).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.constants import Components, Targets
from omnic.targets.base import Artifact, Problem, register_target
from omnic.formats.gguf_arch import plan_arch, tensor_plan
from omnic.targets.gguf.backend import missing, require_llama_cpp
from omnic.targets.gguf.mmproj import mmproj_problems
from omnic.targets.gguf.quant import K_QUANTS, activation_rounding, plan_types

if TYPE_CHECKING:
    from omnic.passes.program import Program
    from omnic.spec import ResolvedSpec
    from omnic.formats.gguf_arch import ArchPlan, GgufTensor
    from omnic.targets.gguf.mmproj_runtime import MmprojRunner
    from omnic.targets.gguf.quant import TypePlan
    from omnic.targets.gguf.runtime import LlamaCppRunner

_log = logging.getLogger(__name__)

# llama.cpp's quantizer reports each --tensor-type override as a warning; those are the spec's
# own per-tensor overrides, asked for on purpose (llama-quant.cpp "applying manual override").
_EXPECTED_QUANTIZE_WARNINGS = ("applying manual override",)


def _problems(spec: "ResolvedSpec") -> list[Problem]:
    ft = spec.targets.gguf.file_type if spec.targets.gguf is not None else "auto"
    # gguf-py writes every file; llama.cpp's own quantizer makes the K mixtures
    reason = missing(llama_cpp=ft in K_QUANTS)
    problems = [Problem(Targets.GGUF, "targets.gguf", reason)] if reason else []
    plan, found = plan_arch(spec.model)
    problems += [Problem(Targets.GGUF, p.field, p.message) for p in found]
    if plan is not None:
        _, found = plan_types(spec, tensor_plan(spec.model, plan))
        problems += found
    problems += mmproj_problems(spec)  # the vision encoder goes into an mmproj file (mmproj.py)
    if spec.quantization.kv_cache == "int8" and spec.model.dim_per_head % 32:
        problems.append(Problem(Targets.GGUF, "quantization.kv_cache", "llama.cpp's int8 KV cache "
                                f"is q8_0 (blocks of 32); head_dim {spec.model.dim_per_head} is "
                                "not a multiple of 32 (llama_init_from_model refuses it)"))
    if spec.tokenizer.kind == "byte" and spec.model.vocab_size < 259:
        problems.append(Problem(Targets.GGUF, "model.vocab_size", "the byte tokenizer needs "
                                "256 bytes + <s>, </s>, <pad>: vocab_size >= 259"))
    return problems


def _plans(program: "Program") -> tuple["ArchPlan", list["GgufTensor"], "TypePlan"]:
    """The architecture, the tensors and the type of each, from the program's quant plan."""
    spec = program.spec
    plan, found = plan_arch(spec.model)
    if plan is None:  # check() has reported these
        raise ValueError("gguf cannot take this spec:\n" + "\n".join(map(str, found)))
    tensors = tensor_plan(spec.model, plan)
    types_plan, found = plan_types(spec, tensors, program.schemes())
    if types_plan is None:
        raise ValueError("gguf cannot take this spec:\n" + "\n".join(map(str, found)))
    return plan, tensors, types_plan


def _decoder_file(program: "Program", types_plan: "TypePlan") -> str:
    return f"{program.spec.name}-{types_plan.file_type.name}.gguf"


@register_target(Targets.GGUF)
class GgufTarget:
    """llama.cpp's GGUF, run with llama-cpp-python."""

    id = Targets.GGUF

    def int4_grid(self, spec: "ResolvedSpec") -> str | None:
        """The `omnic.quant.grids` backend whose int4 codes this target stores: calibrated
        methods (GPTQ) round on it. None: the target quantizes from floats its own way."""
        from omnic.targets.gguf.quant import K_QUANTS

        requested = spec.targets.gguf.file_type if spec.targets.gguf is not None else "auto"
        # Q4_0 (gguf-py's grid); llama.cpp's K-quants search their own scales from the floats,
        # weighted by the calibration's importance matrix (imatrix.py)
        return None if requested in K_QUANTS else "gguf"

    def check(self, spec: "ResolvedSpec") -> list[Problem]:
        """Everything GGUF/llama.cpp cannot express, each naming the spec field."""
        return _problems(spec)

    def lower(self, program: "Program", out_dir: Path) -> list[Artifact]:
        """Write `<name>-<file_type>.gguf` under out_dir; never mutates `program`."""
        from omnic.formats.gguf_vocab import TokenizerError, vocab_for
        from omnic.targets.gguf.write import read_back, write_gguf

        spec = program.spec
        plan, tensors, types_plan = _plans(program)
        ft = types_plan.file_type
        try:
            vocab = vocab_for(spec, Path(program.spec_dir))
        except TokenizerError as err:
            raise ValueError(f"gguf: tokenizer: {err}") from None

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        filename = _decoder_file(program, types_plan)
        final = out_dir / filename
        state = program.decoder.state_dict()

        def fetch(name: str):  # a view of the decoder's float32 tensor, never a copy of the model
            return state[name].detach().to("cpu").float().numpy()

        t0 = time.perf_counter()
        k_quant = ft.name in K_QUANTS
        first = final.with_name(filename + ".f32.tmp") if k_quant else final
        from omnic.targets.gguf.quant import FILE_TYPES

        written_ft = FILE_TYPES["F32"] if k_quant else ft
        write_gguf(first, spec, plan, tensors, types_plan.types, written_ft, vocab, fetch,
                   program.spec_dir)
        write_s = time.perf_counter() - t0
        quantize_s = 0.0
        weighted: list[str] = []
        if k_quant:
            t1 = time.perf_counter()
            try:
                _llama_quantize(first, final, types_plan)
                if program.importance:
                    from omnic.targets.gguf.imatrix import requantize

                    weighted = requantize(first, final, _importance_by_name(program, tensors))
            finally:
                first.unlink(missing_ok=True)
            quantize_s = time.perf_counter() - t1

        # the quantization-exact reference is needed as soon as one tensor is not F32 (an F32
        # file may still hold, say, the spec's int8 embedding override as Q8_0)
        stores_fp32 = not k_quant and set(types_plan.types.values()) == {"F32"}
        facts, weights = read_back(final, spec, plan, tensors, with_weights=not stores_fp32)
        nbytes = final.stat().st_size
        _log.info(f"gguf: {plan.arch} {ft.name} -> {final.name} ({nbytes / 2**20:.1f} MiB, "
                   f"tensors {facts['tensor_types']}, {write_s + quantize_s:.1f} s)")
        rel = Path(out_dir.name) / filename if out_dir.name == Targets.GGUF else Path(filename)
        kv_type = "Q8_0" if spec.quantization.kv_cache == "int8" else "F32"
        return [Artifact(
            component=Components.DECODER,
            target=Targets.GGUF,
            path=str(rel),
            signature={"inputs": {"tokens": "int32[T]"},
                       "outputs": {"logits": f"float32[T, {spec.model.vocab_size}]"}},
            quantization={"file_type": ft.name, "tensor_types": facts["tensor_types"],
                          "bytes_by_type": facts["bytes_by_type"]},
            details={
                "architecture": plan.arch,
                "file_type": ft.name,
                "general.file_type": facts["general.file_type"],
                "bytes": nbytes,
                "tensors": sum(facts["tensor_types"].values()),
                "qk_permuted": plan.permute_qk,
                "tokenizer": {"model": vocab.model, "pre": vocab.pre, "tokens": len(vocab.tokens)},
                "context_length": spec.model.context_length,
                "kv_cache_type": kv_type,
                "writer": "streamed (tensor infos declared first, one tensor in memory at a time)",
                # K mixtures: tensors llama.cpp stored in a 32-block type (rows not 256-blocks)
                "k_quant_fallbacks": {n: facts["types"][n] for n in types_plan.k_fallbacks},
                # tensors ggml_quantize_chunk rounded with the calibration's importance matrix
                **({"imatrix_tensors": len(weighted)} if weighted else {}),
            },
            precision=precision_of(ft, facts["types"], kv_type),
            reference_weights=weights,
            activation_quant=activation_rounding(tensors, facts["types"]) or None,
        )]

    def lower_component(self, program: "Program", name: str, out_dir: Path) -> Artifact:
        """The vision encoder as llama.cpp's `mmproj-<name>-<F32|F16>.gguf` beside the decoder
        (mmproj.py); check() refuses every other component."""
        from omnic.targets.gguf.mmproj import lower_mmproj

        if name != Components.VISION_ENCODER:
            raise ValueError(f"gguf: no GGUF form for the {name} (check() refuses it)")
        _, _, types_plan = _plans(program)
        return lower_mmproj(program, Path(out_dir), _decoder_file(program, types_plan),
                            types_plan.file_type.name)

    def load(self, artifact: Artifact, build_dir: Path) -> "LlamaCppRunner | MmprojRunner":
        """A llama.cpp runner over the artifact; raises if llama.cpp warned while loading, and
        NotRunnable without llama-cpp-python."""
        from omnic.targets.gguf.runtime import LlamaCppRunner, artifact_file

        require_llama_cpp()
        if artifact.component != Components.DECODER:  # the vision encoder's mmproj
            from omnic.targets.gguf.mmproj_runtime import load_mmproj

            return load_mmproj(artifact, Path(build_dir))
        path = artifact_file(Path(build_dir), artifact.path)
        runner = LlamaCppRunner(str(path), n_ctx=int(artifact.details["context_length"]),
                                kv_type=artifact.details.get("kv_cache_type", "F32"))
        if runner.load_warnings:
            runner.close()
            raise RuntimeError("llama.cpp warned while loading " + path.name + ": "
                               + " | ".join(runner.load_warnings[:5]))
        return runner


def _importance_by_name(program: "Program", tensors: list["GgufTensor"]) -> dict[str, Any]:
    """GGUF tensor name -> the importance of its input columns, for single-source matrices
    (row permutations of q and k leave the columns, and so the importance, as they are), fused
    ones (phi3's [q; k; v] and [gate; up], qwen35's [query | gate] per head read one input: the
    first part's importance) and matrices whose columns the file permutes (qwen35's out_proj:
    the importance permuted alike)."""
    imp = program.importance or {}
    out = {}
    for t in tensors:
        if not t.is_matrix or t.sources[0] not in imp or (
                len(t.sources) > 1 and t.transform not in ("concat", "interleave")):
            continue
        columns = imp[t.sources[0]]
        out[t.name] = columns[list(t.index)] if t.index and t.axis == 1 else columns
    return out


def _llama_quantize(src: Path, dst: Path, types_plan) -> None:  # noqa: ANN001 - TypePlan
    """Run llama.cpp's quantizer; any warning it prints that omnic did not plan for fails."""
    from omnic.targets.gguf.quant import run_llama_quantize
    from omnic.targets.gguf.runtime import default_threads, warnings_of

    records = run_llama_quantize(str(src), str(dst), types_plan.file_type, types_plan.k_overrides,
                                 default_threads())
    unexpected = [w for w in warnings_of(records)
                  if not any(e in w for e in _EXPECTED_QUANTIZE_WARNINGS)
                  and not _expected_fallback(w, types_plan.k_fallbacks)]
    if unexpected:
        raise RuntimeError("llama.cpp warned while quantizing: " + " | ".join(unexpected[:5]))


# Coarseness of ggml types (bits per weight, llama.cpp's ggml-common.h block sizes): the
# tolerance row of a file is that of its coarsest matrix type.
_BITS = {"F32": 32.0, "F16": 16.0, "BF16": 15.9, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6.0,
         "Q5_0": 5.5, "Q5_K": 5.5, "Q4_1": 5.0, "Q4_0": 4.5, "Q4_K": 4.5}
_MIXTURE_MAIN = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}


def precision_of(ft, types: dict[str, str], kv_type: str = "F32") -> str:  # noqa: ANN001
    """artifact.precision: the file type's (ft, a quant.FileType), unless an override stored
    something coarser, or the KV cache is q8_0 (the references keep an fp32 cache)."""
    main = _MIXTURE_MAIN.get(ft.name, ft.tensor_type or "F32")
    coarsest = min([*types.values(), kv_type], key=lambda t: _BITS.get(t, 32.0), default=main)
    if _BITS.get(coarsest, 32.0) < _BITS.get(main, 32.0) and coarsest not in _MIXTURE_MAIN.values():
        return coarsest.lower()
    return ft.precision


def _expected_fallback(line: str, names: list[str]) -> bool:
    """llama.cpp's K-quant fallback lines for the tensors plan_types predicted (rows that are not
    whole 256-blocks): one per tensor, and the count at the end (llama-quant.cpp)."""
    import re

    if re.search(r"\d+ of \d+ tensor\(s\) required fallback quantization", line):
        return bool(names)  # the summary; each tensor's own line is checked below
    return ("not divisible by 256" in line and "falling back" in line and "F16" not in line
            and any(re.search(re.escape(n) + r"\s", line) for n in names))


