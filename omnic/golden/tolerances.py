"""THE tolerance table: one row per (target, precision), each with the source of its numbers.

Two kinds of limits in each row:
- conformance against the quantization-exact reference (weights dequantized exactly as the
  artifact stores them): `atol`/`rtol` on the max absolute logit error
  (max|runtime - ref| <= atol + rtol * max|ref|), `nmse` (worst case), `cosine` (worst position),
  `top1` (argmax agreement). These catch a wrong permutation, scale or layout.
- quality against the fp32 reference: `kld` (mean KL(fp32 || runtime), nats) and `top1_fp32`.
  These bound what the quantization itself may cost.
- `weight_nmse`: how far the artifact's `reference_weights` may be from the fp32 weights (a
  stored tensor must be a quantization of the model's tensor, not, say, a permutation of it).

The golden models are tiny random-weight decoders, not trained checkpoints: their logits are
flatter than a real model's, so the published per-op and per-model figures below are the anchors
and the values are set with headroom over what omnic measured on specs/mobile_2gb.yaml (see the
comment of each row). A spec may override any number with
`golden.tolerances: {"target/precision/metric": value}` ("*" matches any target or precision).

Lookup: (target, precision), then ("*", precision), then (target, family), then ("*", family),
where family folds backend spellings (q8_0, int8_g32...) into fp32, fp16, bf16, int8, int4.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

from omnic.constants import Schemes


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    nmse: float
    cosine: float
    top1: float
    kld: float
    top1_fp32: float
    weight_nmse: float
    source: str = ""
    kld_source: str = ""  # where a kld limit not from this table came from (golden/field.py)
    top1_source: str = ""  # why top1_fp32 sits below this table's floor (golden/field.py)
    noise_source: str = ""  # why conformance limits are looser than the row (golden/noise.py)

    def limits(self) -> dict[str, float]:
        """The numeric limits (for the manifest)."""
        return {k: v for k, v in asdict(self).items() if k not in _TEXT}

    @classmethod
    def recorded(cls, limits: Mapping[str, float], source: str) -> "Tolerance":
        """The row a build recorded (its manifest's limits), for re-judging it later."""
        return cls(**{k: float(limits[k]) for k in METRIC_KEYS}, source=source)


_TEXT = ("source", "kld_source", "top1_source", "noise_source")
METRIC_KEYS = tuple(f.name for f in fields(Tolerance) if f.name not in _TEXT)

# Quality limits of a quantized decoder against fp32. The `kld` of an int4/int8 row applies only
# when the build has no field reference (omnic/golden/field.py): normally the limit is 1.25x what
# llama.cpp's rounding of the same recipe costs on the same model, or the spec's golden.max_kld.
# llama-perplexity on LLaMA 3 8B vs FP16:
# Q8_0 mean KLD 0.0014 and 98.5 % same top token; Q4_0 mean KLD 0.074 (Q4_K_M 0.031, 92.2 %).
# ref: https://github.com/ggml-org/llama.cpp/blob/master/tools/perplexity/README.md
# Random-weight golden models have near-flat distributions (small absolute KLD) but argmaxes
# that flip easily: omnic measured on specs/mobile_2gb.yaml (the omnic reference quantizers,
# 2 cases x 23 positions) int4 g32 + int8 embedding KLD 0.0033 / top-1 80 %, int8 per-channel
# KLD 1.5e-5 / top-1 97.8 %. The KLD limits keep room for trained checkpoints (Q4_0 0.074 on
# LLaMA 3 8B); the top-1 limits sit below what flat random models reach.
# weight_nmse: a quantized tensor against its fp32 original; measured int4 g32 0.0043 and int8
# 1.5e-5 on Gaussian weights. A permuted or misplaced tensor gives ~2 (uncorrelated rows).
_INT8_QUALITY = dict(kld=0.01, top1_fp32=0.80, weight_nmse=1e-3)
_INT4_QUALITY = dict(kld=0.10, top1_fp32=0.50, weight_nmse=0.2)

TABLE: dict[tuple[str, str], Tolerance] = {
    # fp32 runtimes. onnxruntime's test checkers compare single ops at atol 1e-5 / rtol 1e-4;
    # a whole decoder (dozens of matmuls, softmax, a prefill and a separate decode path) adds
    # error per layer, so logits get 10x that: atol 1e-4 + rtol 1e-4 * max|logit|.
    # ref: https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/test/providers/checkers.cc
    # NMSE 1e-6 is 2000x tighter than test-backend-ops' 5e-4 for matmul and still ~1e4x above
    # the fp32 reorderings omnic measured; a permuted head gives NMSE ~1.
    ("*", "fp32"): Tolerance(
        atol=1e-4, rtol=1e-4, nmse=1e-6, cosine=0.99999, top1=0.98,
        kld=1e-4, top1_fp32=0.98, weight_nmse=0.0,
        source="onnxruntime checkers fp32 atol 1e-5/rtol 1e-4 x10 for whole-model logits",
    ),
    # llama.cpp F32 files: ggml's CPU GELU rounds its input and output to fp16 (a lookup table,
    # ggml-cpu/vec.h GGML_GELU_FP16), ~1e-3 relative per activation, so a GeGLU decoder cannot
    # reach the fp32 row's max-abs (measured on an imported Gemma 3: 1.1e-3 at max|logit| 3.6,
    # 3e-4 x max|logit|; Gemma 1/2 the same). rtol 3e-3 as the mmproj_f32 row for the same
    # GELU; NMSE stays at the fp32 row's 1e-6 (measured ~1e-7; a permuted head gives ~1), so a
    # SwiGLU model (error ~2e-6) is still held by it.
    # ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cpu/vec.h
    ("gguf", "fp32"): Tolerance(
        atol=1e-4, rtol=3e-3, nmse=1e-6, cosine=0.99999, top1=0.98,
        kld=1e-4, top1_fp32=0.98, weight_nmse=0.0,
        source="ggml fp16-table GELU ~1e-3 relative per activation; measured 3e-4 x max|logit|",
    ),
    # ExecuTorch's XNNPACK tester compares fp32 delegates at atol 1e-3 / rtol 1e-3 (XNNPACK
    # reassociates and fuses more aggressively than eager PyTorch).
    # ref: https://github.com/pytorch/executorch/blob/main/backends/xnnpack/test/tester/tester.py
    ("executorch", "fp32"): Tolerance(
        atol=1e-3, rtol=1e-3, nmse=1e-6, cosine=0.99999, top1=0.98,
        kld=1e-4, top1_fp32=0.98, weight_nmse=0.0,
        source="ExecuTorch XNNPACK tester atol 1e-3/rtol 1e-3",
    ),
    # fp16 / bf16 storage (and, on Core ML, fp16 compute): 11 (8) mantissa bits, relative error
    # ~5e-4 (4e-3) per op; logits within ~1e-2 relative, NMSE <= 1e-4 (1e-3).
    ("*", "fp16"): Tolerance(
        atol=5e-2, rtol=1e-2, nmse=1e-4, cosine=0.9995, top1=0.95,
        kld=1e-3, top1_fp32=0.90, weight_nmse=1e-6,
        source="fp16 unit roundoff 4.9e-4 per op, accumulated over the decoder",
    ),
    ("*", "bf16"): Tolerance(
        atol=2e-1, rtol=4e-2, nmse=1e-3, cosine=0.999, top1=0.90,
        kld=5e-3, top1_fp32=0.85, weight_nmse=1e-4,
        source="bf16 unit roundoff 3.9e-3 per op, accumulated over the decoder",
    ),
    # int8 weights. The exact reference has the stored weights, but CPU runtimes also quantize
    # activations to 8 bits inside the matmul (llama.cpp vec_dot with Q8_0/Q8_K activations,
    # MatMulNBits accuracy_level 4, XNNPACK qd8): llama.cpp's test-backend-ops accepts NMSE 5e-4
    # for ONE quantized matmul; a decoder stacks ~7 per layer, hence 5e-3.
    # ref: https://github.com/ggml-org/llama.cpp/blob/master/tests/test-backend-ops.cpp
    #
    # The exact reference rounds activations as those kernels do (omnic/golden/activations.py,
    # checked against onnxruntime's MatMulNBits to float32 roundoff), but on a trained model it
    # cannot follow a runtime exactly: where an activation sits on a rounding boundary, float
    # roundoff (another summation order, a fused kernel) moves it a whole int8 step, and 30
    # layers compound the steps. The reference computed in float64 instead of float32 moves by
    # as much: on SmolLM2-135M-Instruct (int4 g32, int8 tied embedding, the text prompts) its
    # worst position has cosine 0.9943 and max_abs 1.22 against itself in float32. Measured
    # there: GGUF Q4_0 on llama.cpp cosine 0.9655, max_abs 2.94 (7.5 % of max|logit| 39.3), NMSE
    # 1.1e-3, top-1 94 %; ONNX int4 cosine 0.9926, max_abs 1.52, NMSE 9.7e-4, top-1 93 %. On
    # specs/mobile_2gb.yaml (random weights): cosine >= 0.9997, max_abs <= 0.04, NMSE <= 4e-4.
    # So cosine 0.95 and rtol 0.1, about twice the reference's own float64 movement and above
    # what the runtimes show; NMSE and top-1 keep their limits. Faults stay caught: a permuted
    # head, row order or doubled scale makes the stored weights fail weight_nmse (a doubled
    # scale measured 1.01 on SmolLM2; reversed rows of uncorrelated weights give ~2).
    ("*", "int8"): Tolerance(
        atol=5e-2, rtol=0.1, nmse=5e-3, cosine=0.95, top1=0.90, **_INT8_QUALITY,
        source="test-backend-ops mul_mat NMSE 5e-4 x ~10 matmuls; cosine/max_abs measured on "
               "SmolLM2-135M int4 (0.9655 / 7.5 % of max|logit|); llama-perplexity Q8_0 KLD",
    ),
    # int4 weights: same conformance limits as int8 (the weights are exact, only activation
    # rounding remains); quality limits from llama-perplexity's Q4_0 figures with headroom.
    ("*", "int4"): Tolerance(
        atol=5e-2, rtol=0.1, nmse=5e-3, cosine=0.95, top1=0.90, **_INT4_QUALITY,
        source="test-backend-ops mul_mat NMSE 5e-4 x ~10 matmuls; cosine/max_abs measured on "
               "SmolLM2-135M int4 (0.9655 / 7.5 % of max|logit|); llama-perplexity Q4_0 KLD",
    ),
}

_FAMILIES = [
    (re.compile(r"^(fp32|f32|float32)$"), "fp32"),
    (re.compile(r"^(fp16|f16|float16)"), "fp16"),
    (re.compile(r"^(bf16|bfloat16)"), "bf16"),
    (re.compile(r"^(int8|q8|8w|8da8w|qd8)"), "int8"),
    (re.compile(r"^(int4|q[2-6]|iq[1-4]|4w|8da4w|uint4|nf4)"), "int4"),
]


class ToleranceError(ValueError):
    """No row for a (target, precision), or a malformed override."""


def family(precision: str) -> str | None:
    p = precision.lower()
    for pattern, fam in _FAMILIES:
        if pattern.match(p):
            return fam
    return None


def validate_overrides(overrides: Mapping[str, float]) -> list[str]:
    """Problems with spec `golden.tolerances` keys ('target/precision/metric')."""
    problems = []
    for key in overrides:
        parts = key.split("/")
        if len(parts) != 3 or not all(parts):
            problems.append(f"golden.tolerances: {key!r} is not 'target/precision/metric'")
        elif parts[2] not in METRIC_KEYS:
            problems.append(
                f"golden.tolerances: {key!r}: unknown metric {parts[2]!r}; one of {METRIC_KEYS}"
            )
    return problems


def overridden(overrides: Mapping[str, float], target: str, precision: str,
               metrics: tuple[str, ...] = METRIC_KEYS) -> dict[str, float]:
    """The limits among `metrics` that the spec's golden.tolerances set for an artifact:
    metric -> value.

    Raises:
        ToleranceError: a malformed key.
    """
    if not overrides:
        return {}
    problems = validate_overrides(overrides)
    if problems:
        raise ToleranceError("; ".join(problems))
    fam = family(precision)
    changes: dict[str, float] = {}
    # Less specific first, so that the most specific key wins.
    order = [("*", "*"), (target, "*")]
    if fam and fam != precision:
        order += [("*", fam), (target, fam)]
    order += [("*", precision), (target, precision)]
    for t_key, p_key in order:
        for metric in metrics:
            key = f"{t_key}/{p_key}/{metric}"
            if key in overrides:
                changes[metric] = float(overrides[key])
    return changes


def lookup(target: str, precision: str, overrides: Mapping[str, float] | None = None,
           table: Mapping[tuple[str, str], "Tolerance | ComponentTolerance"] | None = None,
           ) -> Tolerance:
    """The tolerance row for an artifact, with the spec's overrides applied.

    Args:
        table: TABLE (the decoder's, by default) or COMPONENT_TABLE (`lookup_component`).

    Raises:
        ToleranceError: when no row matches; add one to TABLE (with its source) or override it.
    """
    table = TABLE if table is None else table
    fam = family(precision)
    candidates = [(target, precision), ("*", precision)]
    if fam:
        candidates += [(target, fam), ("*", fam)]
    row = next((table[c] for c in candidates if c in table), None)
    if row is None:
        raise ToleranceError(
            f"no tolerance row for target {target!r} precision {precision!r}; add one to "
            "omnic/golden/tolerances.py with the source of its numbers"
        )
    changes = overridden(overrides or {}, target, precision,
                         tuple(f.name for f in fields(row) if f.name not in _TEXT))
    if changes:
        row = replace(row, source=row.source + f"; overridden by spec: {sorted(changes)}",
                      **changes)
    return row


def weight_limit(tol: Tolerance, target: str, scheme: "object | None",
                 overrides: Mapping[str, float] | None = None) -> float:
    """weight_nmse for one tensor of an artifact whose row is `tol`: the row's, or the tensor's
    own scheme's (`scheme`: its TensorScheme, None when unknown) when that is coarser. An
    artifact's label is the scheme holding most elements, which for a large int8 embedding
    (Gemma 3's 262k vocabulary) is int8 while its matrices are int4."""
    name = getattr(scheme, "scheme", None)
    if name not in (Schemes.INT4, Schemes.INT8):
        return tol.weight_nmse
    try:
        own = lookup(target, name, overrides).weight_nmse
    except ToleranceError:
        return tol.weight_nmse
    return max(tol.weight_nmse, own)


# -- components (encoders, projectors, heads) --------------------------------------------------


@dataclass(frozen=True)
class ComponentTolerance:
    """Limits of a component artifact against its torch module on the same input (float32 out):
    max|runtime - torch| <= atol + rtol * max|torch| over every element, and NMSE
    (sum (runtime - torch)^2 / sum torch^2, worst input) <= nmse. A spec override
    `target/precision/atol|rtol|nmse` applies to the decoder's row and this one alike."""

    atol: float
    rtol: float
    nmse: float
    source: str = ""

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "source"}


# A component is a few layers (patch/conv embedding, 2-24 transformer blocks, an MLP projector)
# producing embeddings, not logits: one forward pass, no KV cache, no decode loop. omnic measured
# on tests/targets/test_components.py's tiny spec (random weights, outputs max|y| 0.04-0.06),
# worst of the four components: onnxruntime max-abs 1.5e-8 / NMSE 2.9e-14, ExecuTorch XNNPACK
# 3.4e-8 / 6.1e-14, TVM 1.5e-8 / 3.3e-14. A wrong layout (the permute_component_weights fault,
# one weight's rows reversed) gives max-abs 5e-3 to 2.8e-2 and NMSE 6e-3 to 0.18.
COMPONENT_TABLE: dict[tuple[str, str], ComponentTolerance] = {
    # onnxruntime's test checkers: fp32 atol 1e-5 / rtol 1e-4 for one op; a whole encoder keeps
    # them (~600x the measured worst max-abs, which real fp32 encoders 10x deeper still fit).
    # NMSE 1e-8: 1e5 above the fp32 reorderings measured, 6e5 below a permuted weight.
    # ref: https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/test/providers/checkers.cc
    ("*", "fp32"): ComponentTolerance(
        atol=1e-5, rtol=1e-4, nmse=1e-8,
        source="onnxruntime checkers fp32 atol 1e-5/rtol 1e-4; NMSE 1e5 x measured fp32 noise",
    ),
    # ExecuTorch's XNNPACK tester compares fp32 delegates at atol 1e-3 / rtol 1e-3. XNNPACK's
    # GEMM microkernels block and fuse the reductions differently: NMSE 7.3e-8 measured on the
    # 12-layer, 768-wide vision tower of specs/vision_4gb.yaml (6e-14 on the tiny test towers),
    # so 1e-6, still 3 orders of magnitude below a permuted weight (>= 1.6e-3 measured).
    # ref: https://github.com/pytorch/executorch/blob/main/backends/xnnpack/test/tester/tester.py
    ("executorch", "fp32"): ComponentTolerance(
        atol=1e-3, rtol=1e-3, nmse=1e-6,
        source="ExecuTorch XNNPACK tester atol 1e-3/rtol 1e-3; NMSE 14x the 7.3e-8 measured on a "
               "12-layer 768-wide encoder",
    ),
    # fp16 weights and compute (Core ML at compute_precision fp16): unit roundoff 4.9e-4 per op,
    # a few dozen ops deep: ~1e-2 relative on the outputs, NMSE <= 1e-4 (as the decoder's row).
    ("*", "fp16"): ComponentTolerance(
        atol=1e-3, rtol=1e-2, nmse=1e-4,
        source="fp16 unit roundoff 4.9e-4 per op, accumulated over the encoder",
    ),
    # llama.cpp's mmproj run by libmtmd (omnic/targets/gguf/mmproj.py). ggml's CPU GELU and
    # quick-GELU round their input and output to fp16 (a lookup table, ggml-cpu/vec.h
    # GGML_GELU_FP16): ~1e-3 relative per activation whatever the weights, so f32 files cannot
    # reach the fp32 row. omnic measured on specs/vision_4gb.yaml's 93.8 M SigLIP-shaped encoder
    # (512 px, 12 blocks): max-abs 5.9e-4 x max|y|, NMSE 3.7e-7 (f32); 9.1e-4 x max|y|, NMSE
    # 8.7e-7 (f16 weights, f16 activations in the matmuls); tiny specs: NMSE <= 2.4e-7. Limits
    # with 5x (max-abs) and ~30x (NMSE) headroom. Swapping one block's v and o projections of the
    # tiny test spec (std-0.02 seeded weights) gives NMSE 1.6e-3, 160x the f32 limit.
    # ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cpu/vec.h
    ("gguf", "mmproj_f32"): ComponentTolerance(
        atol=1e-4, rtol=3e-3, nmse=1e-5,
        source="ggml fp16-table GELU ~1e-3 relative per activation; measured 5.9e-4 / 3.7e-7",
    ),
    ("gguf", "mmproj_f16"): ComponentTolerance(
        atol=1e-4, rtol=5e-3, nmse=3e-5,
        source="f16 weights + ggml fp16-table GELU; measured 9.1e-4 x max|y| / NMSE 8.7e-7",
    ),
}


def lookup_component(target: str, precision: str,
                     overrides: Mapping[str, float] | None = None) -> ComponentTolerance:
    """The component tolerance row for an artifact (same lookup order and overrides as `lookup`)."""
    return lookup(target, precision, overrides, table=COMPONENT_TABLE)
