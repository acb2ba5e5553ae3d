"""What each target can carry, as one table of small rules (torch-free).

Validation runs every rule of every enabled target on the resolved spec and reports the findings
at the field that must change. Target engineers extend the table here (or call `register`) and
may call `problems(spec, target_id)` from their `Target.check`, so the rule lives in one place.

A rule states a hard limit of a toolchain or runtime ("error": the artifact cannot be built or
cannot follow the quantization plan) or something a user should know ("warning": built, but
slower or not deployable to the chosen device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from omnic.constants import Schemes, Targets

if TYPE_CHECKING:
    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec
    from omnic.spec.inventory import TensorInfo
    from omnic.targets.base import Problem

FieldPath = tuple


@dataclass(frozen=True)
class Finding:
    path: FieldPath  # the spec field to change, e.g. ("targets", "coreml", "deployment_target")
    message: str
    severity: str = "error"


@dataclass
class Context:
    """What a rule looks at: the resolved spec and the storage scheme of every tensor."""

    spec: "ResolvedSpec"
    tensors: list["TensorInfo"] = field(default_factory=list)
    schemes: dict[str, "TensorScheme"] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: "ResolvedSpec") -> "Context":
        from omnic.quant.select import tensor_schemes
        from omnic.spec.inventory import decoder_tensors

        tensors = decoder_tensors(spec.model)
        return cls(spec, tensors, tensor_schemes(spec, tensors))

    def using(self, scheme: str) -> list[tuple["TensorInfo", "TensorScheme"]]:
        """Tensors stored with `scheme`, with their TensorScheme."""
        return [(t, self.schemes[t.name]) for t in self.tensors if self.schemes[t.name].scheme == scheme]

    def source(self, ts: "TensorScheme") -> FieldPath:
        """The spec field that chose `ts`: the override, or the default weight scheme."""
        if ts.override is not None:
            return ("quantization", "overrides", ts.override)
        return ("quantization", "weights")


@dataclass(frozen=True)
class Rule:
    target: str
    id: str
    summary: str
    ref: str
    check: Callable[[Context], Iterable[Finding]]


RULES: list[Rule] = []


def register(target: str, rule_id: str, summary: str, ref: str):
    """Decorator: add a check function `(Context) -> Iterable[Finding]` to the table."""

    def deco(fn: Callable[[Context], Iterable[Finding]]):
        RULES.append(Rule(target, rule_id, summary, ref, fn))
        return fn

    return deco


def _first(pairs: list, n: int = 2) -> str:
    names = [t.name for t, _ in pairs[:n]]
    more = f" and {len(pairs) - n} more" if len(pairs) > n else ""
    return ", ".join(names) + more


# --- Core ML ------------------------------------------------------------------------------------
_COREML_IOS18 = ("iOS18", "macOS15")
_COREML_OS_VERSION = {"iOS16": ("ios", 16), "iOS17": ("ios", 17), "iOS18": ("ios", 18),
                      "macOS14": ("macos", 14), "macOS15": ("macos", 15)}


@register(Targets.COREML, "coreml.int4_needs_ios18",
          "int4 weights are per-block linear quantization, available from iOS18/macOS15",
          "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html")
def _coreml_int4(ctx: Context):
    target = ctx.spec.targets.coreml.deployment_target
    int4 = ctx.using(Schemes.INT4)
    if int4 and target not in _COREML_IOS18:
        yield Finding(("targets", "coreml", "deployment_target"),
                      f"int4 per-block weights ({_first(int4)}) need deployment_target iOS18 or "
                      f"macOS15, got {target}")


@register(Targets.COREML, "coreml.int8_blocks_need_ios18",
          "int8 with a group_size is per-block quantization: iOS18/macOS15 (per-channel: iOS16)",
          "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-api.html")
def _coreml_int8_blocks(ctx: Context):
    target = ctx.spec.targets.coreml.deployment_target
    blocks = [(t, s) for t, s in ctx.using(Schemes.INT8) if s.group_size is not None]
    if blocks and target not in _COREML_IOS18:
        yield Finding(("targets", "coreml", "deployment_target"),
                      f"int8 per-block weights ({_first(blocks)}) need deployment_target iOS18 or "
                      f"macOS15, got {target}; use group_size null (per channel) or iOS18")


@register(Targets.COREML, "coreml.no_bf16", "Core ML stores weights as fp16 or fp32, never bf16",
          "https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html")
def _coreml_bf16(ctx: Context):
    for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.BF16)}):
        yield Finding(path + ("scheme",), "coreml cannot store bf16 weights; use fp16")


@register(Targets.COREML, "coreml.kv_fp16",
          "the stateful KV cache is a Core ML state, and states are fp16 only",
          "https://apple.github.io/coremltools/docs-guides/source/stateful-models.html")
def _coreml_kv(ctx: Context):
    if ctx.spec.quantization.kv_cache == "int8":
        yield Finding(("quantization", "kv_cache"),
                      "coreml keeps the KV cache in fp16 states; int8 is not supported")


@register(Targets.COREML, "coreml.device",
          "the deployment target must be an OS the device runs",
          "https://developer.apple.com/documentation/coreml")
def _coreml_device(ctx: Context):
    device = ctx.spec.device
    os_name, version = _COREML_OS_VERSION[ctx.spec.targets.coreml.deployment_target]
    if device.os not in ("ios", "macos"):
        yield Finding(("targets", "coreml"),
                      f"device {device.name} runs {device.os}: the Core ML artifact is built and "
                      "checked but cannot be deployed to it", "warning")
    elif device.os == os_name and device.os_version and device.os_version.split(".")[0].isdigit():
        if int(device.os_version.split(".")[0]) < version:
            yield Finding(("targets", "coreml", "deployment_target"),
                          f"device {device.name} runs {device.os} {device.os_version}, older than "
                          f"deployment_target {ctx.spec.targets.coreml.deployment_target}")


@register(Targets.COREML, "coreml.ane_fp16",
          "the Neural Engine computes in fp16; fp32 precision runs on CPU/GPU only",
          "https://apple.github.io/coremltools/docs-guides/source/typed-execution.html")
def _coreml_ane(ctx: Context):
    c = ctx.spec.targets.coreml
    if c.compute_units == "cpu_and_ne" and c.compute_precision == "fp32":
        yield Finding(("targets", "coreml", "compute_precision"),
                      "fp32 compute never runs on the Neural Engine (it is fp16); cpu_and_ne "
                      "will fall back to the CPU", "warning")


# --- ExecuTorch ---------------------------------------------------------------------------------
@register(Targets.EXECUTORCH, "executorch.xnnpack_no_bf16", "XNNPACK has no bf16 kernels",
          "https://github.com/pytorch/executorch/tree/main/backends/xnnpack")
def _et_bf16(ctx: Context):
    backend = ctx.spec.targets.executorch.backend
    if backend in ("xnnpack", "coreml"):
        for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.BF16)}):
            yield Finding(path + ("scheme",),
                          f"executorch backend {backend} cannot run bf16 weights; use fp16")


@register(Targets.EXECUTORCH, "executorch.xnnpack_int4_symmetric",
          "XNNPACK blockwise int4 weights (torchao 8da4w) carry scales only, no zero points",
          "https://github.com/pytorch/ao/blob/main/torchao/quantization/GPTQ.py")
def _et_int4_asym(ctx: Context):
    if ctx.spec.targets.executorch.backend != "xnnpack":
        return
    for path in sorted({ctx.source(s) for _, s in ctx.using(Schemes.INT4) if not s.symmetric}):
        yield Finding(path + ("symmetric",),
                      "executorch xnnpack int4 weights are symmetric; set symmetric: true")


# --- ONNX ---------------------------------------------------------------------------------------
@register(Targets.ONNX, "onnx.block_size",
          "MatMulNBits block_size is a power of two, at least 16",
          "https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md"
          "#com.microsoft.MatMulNBits")
def _onnx_blocks(ctx: Context):
    seen = set()
    for scheme in (Schemes.INT4, Schemes.INT8):
        for _, s in ctx.using(scheme):
            g = s.group_size
            if g is None or (g >= 16 and g & (g - 1) == 0) or ctx.source(s) in seen:
                continue
            seen.add(ctx.source(s))
            yield Finding(ctx.source(s) + ("group_size",),
                          f"onnx MatMulNBits needs a power-of-two group_size >= 16, got {g}; "
                          f"nearest: {max(16, min((1 << (g.bit_length() - 1), 1 << g.bit_length()), key=lambda b: (abs(b - g), b)))}")


# --- GGUF ---------------------------------------------------------------------------------------
@register(Targets.GGUF, "gguf.block_32",
          "ggml quantized rows are whole blocks of 32 (Q4_0/Q4_1/Q8_0)",
          "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h")
def _gguf_blocks(ctx: Context):
    odd = [(t, s) for t, s in ctx.using(Schemes.INT4) + ctx.using(Schemes.INT8) if t.shape[-1] % 32]
    if odd:
        yield Finding(("targets", "gguf"),
                      f"input width not a multiple of 32 ({_first(odd)}): llama.cpp stores these "
                      "matrices unquantized", "warning")


# A target may keep its own rules in a torch-free module `omnic/targets/<id>_rules.py` that
# registers them on import; validation imports it for every enabled target, so `omnic validate`
# and the target's pre-flight `check` see the same table.
RULE_MODULE = "omnic.targets.{}.rules"


def _load_rule_modules(targets: Iterable[str]) -> None:
    import importlib

    for target in targets:
        name = RULE_MODULE.format(target)
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def findings(spec: "ResolvedSpec", targets: Iterable[str] | None = None,
             context: Context | None = None) -> list[tuple[Rule, Finding]]:
    """Every finding of every rule for the enabled targets (or the `targets` given)."""
    ctx = context or Context.of(spec)
    enabled = set(spec.targets.enabled() if targets is None else targets)
    _load_rule_modules(sorted(enabled))
    return [(r, f) for r in RULES if r.target in enabled for f in r.check(ctx)]


def problems(spec: "ResolvedSpec", target_id: str) -> list["Problem"]:
    """The error findings for one target as `Problem`s (for `Target.check`)."""
    from omnic.spec.load import format_path
    from omnic.targets.base import Problem

    return [Problem(target_id, format_path(f.path), f.message)
            for _, f in findings(spec, [target_id]) if f.severity == "error"]
