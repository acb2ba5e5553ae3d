"""What every decoder tensor becomes in each backend, and how many bytes it takes there.

One function per target, each reading the decision from the module that target lowers with, so
`omnic plan --explain-quant`, the per-target byte model (`omnic.targets.footprint`) and the
artifacts cannot disagree (tests lower tiny specs and compare):

| target     | decision read from              | recorded in the artifact as     |
|------------|---------------------------------|---------------------------------|
| gguf       | gguf.quant.plan_types           | quantization.tensor_types, file |
|            | (+ omnic.quant.ggml K mixtures) |                                 |
| onnx       | onnx.quant.storage_form         | model metadata `omnic.weights`  |
| executorch | executorch.quant.form_of        | quantization.forms              |
| coreml     | coreml.quant.storage_form       | quantization.compressed         |
| tvm        | tvm.quant.storage_form          | quantization.packed             |

Bytes are what the backend stores for that tensor: its own scale dtype (fp32 for MatMulNBits and
ExecuTorch's int8 kernels, fp16 for GGUF blocks and Core ML, bf16 for XNNPACK's int4 blocks), and
a tied embedding counted where the backend keeps it (once in GGUF, ONNX, Core ML, TVM; twice in
ExecuTorch, as the lookup table and as the lm_head's quantized linear).

Torch-free and backend-free: only omnic modules and the standard library are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from omnic.constants import Schemes, Targets, TensorNames

if TYPE_CHECKING:
    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec


@dataclass(frozen=True)
class Fate:
    """One tensor in one backend.

    Attributes:
        form: the backend's own name for the storage ("Q4_0", "MatMulNBits int4 block 32",
            "8da4w_g32", "constexpr_blockwise_shift_scale int4 block 32", "int4 g32 packed").
        bytes: bytes this tensor adds to the artifact (0 when it shares another tensor's copy).
        grid: the integer levels and scale storage, when they differ from omnic's reference.
        detail: structured facts tests compare with the artifact's own record.
    """

    form: str
    bytes: int
    grid: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class NotCarried(Exception):
    """The target cannot carry this spec (its pre-flight problems, as text)."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _float_bytes(scheme: str) -> int:
    return 4 if scheme == Schemes.FP32 else 2


def _context(spec: "ResolvedSpec"):
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import decoder_tensors

    tensors = decoder_tensors(spec.model)
    return tensors, tensor_schemes(spec, tensors)


# -- GGUF ------------------------------------------------------------------------------------
def gguf(spec: "ResolvedSpec") -> dict[str, Fate]:
    """GGUF: the ggml type of each tensor (plan_types; K mixtures predicted as llama.cpp does)."""
    from omnic.quant import ggml
    from omnic.formats.gguf_arch import plan_arch, tensor_plan
    from omnic.targets.gguf.quant import K_QUANTS, KEEP_F32_SUFFIXES, plan_types

    arch, problems = plan_arch(spec.model)
    if arch is None:
        raise NotCarried("; ".join(f"{p.field}: {p.message}" for p in problems))
    tensors = tensor_plan(spec.model, arch)
    tp, problems = plan_types(spec, tensors)
    if tp is None:
        raise NotCarried("; ".join(f"{p.field}: {p.message}" for p in problems))
    types = dict(tp.types)
    if tp.file_type.name in K_QUANTS:
        matrices = [(t.name, t.shape) for t in tensors
                    if t.is_matrix and not t.name.endswith(KEEP_F32_SUFFIXES)]
        experts = spec.model.moe.experts if spec.model.moe else 0
        types.update(ggml.k_mixture_types(tp.file_type.name, matrices, tp.k_overrides,
                                          spec.model.n_layers, experts))
    out = {}
    for t in tensors:
        ty = types[t.name]
        share = ggml.nbytes(t.shape, ty) // len(t.sources)
        for src in t.sources:
            out[src] = Fate(ty, share, ggml.GRIDS.get(ty, ""), {"gguf_name": t.name, "type": ty})
    return out


# -- ONNX ------------------------------------------------------------------------------------
def onnx(spec: "ResolvedSpec") -> dict[str, Fate]:
    """ONNX: MatMulNBits / GatherBlockQuantized with fp32 scales, or 16/32-bit initializers."""
    from omnic.targets.onnx.quant import storage_form

    tensors, schemes = _context(spec)
    tied = spec.model.tie_embeddings
    out = {}
    for t in tensors:
        ts = schemes[t.name]
        rec = storage_form(t, ts, tied)
        if rec["form"] == "MatMulNBits":
            label = f"MatMulNBits int{rec['bits']} block {rec['block_size']}"
            if ts.group_size is None:
                label += " (per channel)"
            if rec.get("gather"):
                label = (f"GatherBlockQuantized + {label}, one copy" if tied
                         else f"GatherBlockQuantized int{rec['bits']} block {rec['block_size']}")
            grid = _int_grid(ts, "fp32")
        else:
            label = f"{rec['form']} {rec['dtype']}"
            grid = ""
        out[t.name] = Fate(label, rec["bytes"], grid,
                           {k: rec[k] for k in ("form", "bits", "block_size") if k in rec})
    return out


def _int_grid(ts: "TensorScheme", scale_dtype: str) -> str:
    if ts.scheme == Schemes.INT4:
        levels = "-8..7" if ts.symmetric else "0..15 + zero point"
    else:
        levels = "-127..127" if ts.symmetric else "0..255 + zero point"
    return f"{levels}, {scale_dtype} scales"


# -- ExecuTorch ------------------------------------------------------------------------------
def executorch(spec: "ResolvedSpec") -> dict[str, Fate]:
    """ExecuTorch XNNPACK: 8da4w / 8da8w linears, quantized embedding lookups, one float type."""
    from omnic.targets.executorch.quant import form_of

    tensors, schemes = _context(spec)
    tied = spec.model.tie_embeddings
    floats = {schemes[t.name].scheme for t in tensors if t.is_matrix} & {Schemes.FP16, Schemes.BF16}
    program_float = floats.pop() if len(floats) == 1 else None
    out = {}
    for t in tensors:
        ts = schemes[t.name]
        n = _numel(t.shape)
        form = form_of(t.name, ts, tied, t.shape[-1])
        if form is None:
            dtype = program_float or Schemes.FP32  # the whole program is cast to one float type
            copies = 2 if t.name == TensorNames.EMBED and tied and t.is_matrix else 1
            note = "whole program " + dtype if program_float else ""
            if copies == 2:
                note = (note + "; " if note else "") + "stored twice: lookup table + lm_head"
            out[t.name] = Fate(dtype, copies * n * _float_bytes(dtype), note, {"form": None})
            continue
        out[t.name] = Fate(form, _et_bytes(form, t.shape, ts), _et_grid(form, ts), {"form": form})
    return out


def _et_bytes(form: str, shape: tuple[int, ...], ts: "TensorScheme") -> int:
    """Bytes of one ExecuTorch form: XNNPACK's qb4w packs nibbles with bf16 block scales, qc8w
    keeps int8 with fp32 per-channel scales; the quantized embedding kernels keep int8 (or packed
    int4) codes, fp32 scales and int8 zero points per group."""
    rows, cols = shape
    n = rows * cols
    total = 0
    for part in form.split("+"):
        if part.startswith("8da4w"):
            total += n // 2 + 2 * rows * (cols // ts.group_size)
        elif part == "8da8w":
            total += n + 4 * rows
        else:  # embedding_{bits}bit[_g{g}]
            groups = rows * (1 if ts.group_size is None else cols // ts.group_size)
            codes = n if part.startswith("embedding_8") else n // 2
            total += codes + 4 * groups + groups
    return total


def _et_grid(form: str, ts: "TensorScheme") -> str:
    if "8da4w" in form:
        return ("int4 -8..7, bf16 positive scales (extreme on -8, or on +7 when positive); "
                "int8 activations")
    if "8da8w" in form:
        return "int8 -127..127, fp32 scales; int8 activations"
    return _int_grid(ts, "fp32")


# -- Core ML ---------------------------------------------------------------------------------
def coreml(spec: "ResolvedSpec") -> dict[str, Fate]:
    """Core ML: constexpr_blockwise_shift_scale (coremltools' linear quantizer) or the compute
    precision's float type."""
    from omnic.targets.coreml.quant import storage_form

    tensors, schemes = _context(spec)
    precision = spec.targets.coreml.compute_precision if spec.targets.coreml else "fp16"
    out = {}
    for t in tensors:
        rec = storage_form(t, schemes[t.name], precision)
        out[t.name] = Fate(rec["label"], rec["bytes"], rec.get("grid", ""),
                           {k: rec[k] for k in ("dtype", "block", "symmetric") if k in rec})
    return out


# -- TVM -------------------------------------------------------------------------------------
def tvm(spec: "ResolvedSpec") -> dict[str, Fate]:
    """TVM: packed int4/int8 codes with fp16 scales, dequantized inside the graph."""
    from omnic.targets.tvm.quant import packing_problem, storage_form

    tensors, schemes = _context(spec)
    out = {}
    for t in tensors:
        why = packing_problem(t.shape, schemes[t.name].scheme, schemes[t.name].group_size)
        if why and t.is_matrix:
            raise NotCarried(f"{t.name}: {why}")
        rec = storage_form(t, schemes[t.name])
        out[t.name] = Fate(rec["label"], rec["bytes"], rec.get("grid", ""), {})
    return out


FATES: dict[str, Callable[["ResolvedSpec"], dict[str, Fate]]] = {
    Targets.GGUF: gguf, Targets.ONNX: onnx, Targets.EXECUTORCH: executorch,
    Targets.COREML: coreml, Targets.TVM: tvm,
}


def fates(spec: "ResolvedSpec", target: str) -> dict[str, Fate]:
    """Canonical tensor name -> Fate in `target`; raises NotCarried when the target's pre-flight
    check rejects the spec (the explanation then shows why instead).

    `Target.check` is torch-free for gguf, onnx, executorch and coreml (a test keeps `omnic plan`
    free of torch and backends); TVM's parses its target string with tvm, so for TVM only its
    rules in `omnic.targets.rules` and the packing rule (below) are checked here.
    """
    if target == Targets.TVM:
        from omnic.targets.rules import problems as rule_problems

        problems = rule_problems(spec, target)
    else:
        from omnic.targets.base import get_target

        problems = get_target(target).check(spec)
    if problems:
        raise NotCarried("; ".join(f"{p.field}: {p.message}" for p in problems))
    return FATES[target](spec)
