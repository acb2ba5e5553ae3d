"""The memory plan: what a resolved spec needs at run time, against its device (torch-free).

Weights are exact, from the tensor inventory and the quantization plan (scales and zero points
included); the KV cache is exact for its storage; activations and runtime overhead are estimates
whose assumptions are listed in `ASSUMPTIONS` and written into the plan itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable

from omnic.constants import Roles, Schemes
from omnic.quant.select import TensorScheme, storage_id, tensor_schemes
from omnic.spec.inventory import TensorInfo, decoder_tensors
from omnic.spec.layers import state_numel
from omnic.targets.kv_layout import kv_positions, layer_runs

if TYPE_CHECKING:
    from omnic.spec import Device, ResolvedSpec

MIB = 1024 * 1024

# Storage assumptions, one row per scheme (bytes per weight, per scale, per zero point). Group-wise
# schemes keep one scale per group of `group_size` weights along the input dimension; int8 with no
# group_size keeps one per output row. Scales are fp16 as in llama.cpp Q4_0/Q8_0 blocks, ONNX
# MatMulNBits and Core ML per-block weights; asymmetric int4 packs its zero points as uint4 like
# MatMulNBits, asymmetric int8 stores one uint8 zero point per group.
# ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h
#      (block_q4_0, block_q8_0)
# ref: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits
STORAGE = {
    #  scheme        bits/weight  scale bytes/group  zero-point bits/group (asymmetric only)
    Schemes.FP32: (32, 0, 0),
    Schemes.FP16: (16, 0, 0),
    Schemes.BF16: (16, 0, 0),
    Schemes.INT8: (8, 2, 8),
    Schemes.INT4: (4, 2, 4),
}
# KV cache storage per element. `none` is fp32: the widest any target keeps (the ONNX CPU,
# ExecuTorch XNNPACK and TVM llvm graphs run fp32 activations), so the plan holds for all of them.
# int8 keeps one fp16 scale per (position, kv head) vector, like llama.cpp's q8_0 cache blocks.
KV_BYTES = {"none": 4, "int8": 1}
KV_INT8_SCALE_BYTES = 2
# Prefill runs in chunks; the activation estimate is the live set of one decoder layer for one
# chunk in fp32 (residual, q/k/v, scores and probabilities over the whole static cache, FFN
# intermediates) or the chunk's logits, whichever is larger.
PREFILL_CHUNK = 128
# The runtime itself (library code, allocator arenas, tokenizer, I/O buffers), plus allocator
# fragmentation over everything else.
RUNTIME_BASE_BYTES = 64 * MIB
FRAGMENTATION = 0.10

ASSUMPTIONS = {
    "scales": "fp16, one per group (per output row for int8 without group_size)",
    "zero_points": "asymmetric only: uint4 per group for int4, uint8 per group for int8",
    "tied_embeddings": "stored once",
    "kv_cache": "none = fp32 (the widest target); int8 = 1 byte + one fp16 scale per head "
                "vector; per layer the positions each enabled target allocates (sliding layers: "
                "a window-sized ring or llama.cpp's SWA cache, omnic.targets.kv_layout), the "
                "largest target counted",
    "activations": f"fp32, one prefill chunk of min(context_length, {PREFILL_CHUNK}) tokens, "
                   "attention over the full static cache",
    "runtime_overhead": f"{RUNTIME_BASE_BYTES // MIB} MiB + {int(FRAGMENTATION * 100)}% "
                        "of the rest",
    "decode_bytes_per_token": "every weight once (one embedding row when untied; routed experts "
                              "scaled by top_k/experts) + the KV cache read",
}


def tensor_bytes(shape: tuple[int, ...], ts: TensorScheme) -> int:
    """Exact bytes of one tensor stored as `ts` (packed weights + scales + zero points)."""
    bits, scale_bytes, zero_bits = STORAGE[ts.scheme]
    cols = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    if scale_bytes == 0:
        return rows * cols * bits // 8
    per_row = -(-cols // ts.group_size) if ts.group_size else 1
    groups = rows * per_row
    packed = rows * (-(-cols * bits // 8))  # each row padded to whole bytes
    zero = 0 if ts.symmetric else -(-groups * zero_bits // 8)
    return packed + groups * scale_bytes + zero


@dataclass(frozen=True)
class WeightLine:
    """Weights of one component stored one way."""

    component: str
    storage: str
    tensors: int
    parameters: int
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    budget_bytes: int
    bandwidth_gbps: float
    parameters: int
    weights: list[WeightLine]
    weight_bytes: int
    kv_cache: str
    kv_cache_bytes: int
    activation_bytes: int
    runtime_overhead_bytes: int
    total_bytes: int
    headroom_bytes: int
    fits: bool
    decode_bytes_per_token_empty: int
    decode_bytes_per_token_full: int
    decode_tokens_per_s_empty: float
    decode_tokens_per_s_full: float
    assumptions: dict = field(default_factory=lambda: dict(ASSUMPTIONS))
    notes: list[str] = field(default_factory=list)
    # Per target: the artifact's predicted bytes, line by line (omnic.targets.footprint); filled
    # by plan_memory(..., artifacts=True), e.g. for `omnic plan` and the manifest.
    artifacts: list[dict] = field(default_factory=list)
    # KV cache bytes of each enabled target (its per-layer allocation, omnic.targets.kv_layout)
    kv_cache_per_target: dict = field(default_factory=dict)
    # The per-layer table as runs of equal rows (attention kind, window, RoPE).
    layers: list[dict] = field(default_factory=list)
    # Prompt positions one input of each encoder takes (`<image>` tokens per image, ...), out of
    # context_length (plan_components).
    placeholder_tokens: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form (written into the manifest and printed by `omnic plan --json`)."""
        return asdict(self)


def kv_cache_bytes(spec: "ResolvedSpec", target: str | None = None) -> int:
    """K and V of every attention layer, in the spec's KV storage: the positions `target`
    allocates per layer, or the spec's own static graph's (full layers: context_length; sliding
    layers: a ring of their window) when None; plus the fixed-size state of the other layers
    (`state_bytes`), which does not grow with the context."""
    m = spec.model
    vectors = 2 * m.kv_heads * sum(kv_positions(spec, target))  # one head_dim vector each
    kind = spec.quantization.kv_cache
    per_vector = m.dim_per_head * KV_BYTES[kind] + (KV_INT8_SCALE_BYTES if kind == "int8" else 0)
    return vectors * per_vector + state_bytes(spec)


def state_bytes(spec: "ResolvedSpec") -> int:
    """The recurrent state of the layers that keep one instead of a KV cache, in float32 (as
    llama.cpp keeps its recurrent states): see omnic.spec.layers.state_numel."""
    return 4 * sum(n * numel for n, numel in state_numel(spec.model).values())


def activation_bytes(spec: "ResolvedSpec") -> int:
    """Estimated peak activations of one prefill chunk (see PREFILL_CHUNK)."""
    m = spec.model
    t, c, d = min(m.context_length, PREFILL_CHUNK), m.context_length, m.d_model
    q_out, kv_out = m.n_heads * m.dim_per_head, m.kv_heads * m.dim_per_head
    attention = t * (q_out + 2 * kv_out) + 2 * m.n_heads * t * c + t * q_out
    routed = (m.moe.top_k + m.moe.shared_experts) if m.moe else 1
    ffn = (3 if m.ffn.kind in ("swiglu", "geglu") else 2) * t * m.ffn.hidden * routed
    logits = t * m.vocab_size
    return 4 * (2 * t * d + max(attention, ffn, logits))


def _read_per_token(spec: "ResolvedSpec", t: TensorInfo, nbytes: int) -> float:
    m = spec.model
    if t.role == Roles.EMBEDDING and not m.tie_embeddings:
        return nbytes / m.vocab_size  # one row is gathered
    if m.moe and ".experts." in t.name:
        return nbytes * m.moe.top_k / m.moe.experts
    return nbytes


def plan_memory(spec: "ResolvedSpec", device: "Device | None" = None,
                tensors: Iterable[TensorInfo] | None = None, *, artifacts: bool = False,
                spec_dir: "str | None" = None) -> MemoryPlan:
    """The memory plan of a resolved spec on its device (or on `device`).

    Args:
        spec: a resolved spec.
        device: plan against this device instead of `spec.device` (to find devices that fit).
        tensors: the inventory (default: the decoder's).
        artifacts: also predict each enabled target's artifact bytes (`MemoryPlan.artifacts`).
        spec_dir: the spec's folder, to read a Hugging Face tokenizer's files for that.

    Returns:
        A MemoryPlan; `fits` is False when the total exceeds the device's memory budget.
    """
    device = device or spec.device
    inventory = list(decoder_tensors(spec.model) if tensors is None else tensors)
    schemes = tensor_schemes(spec, inventory)
    lines: dict[tuple[str, str], list[int]] = {}
    read = 0.0
    for t in inventory:
        ts = schemes[t.name]
        nbytes = tensor_bytes(t.shape, ts)
        line = lines.setdefault((t.component, storage_id(ts)), [0, 0, 0])
        line[0] += 1
        line[1] += t.numel
        line[2] += nbytes
        read += _read_per_token(spec, t, nbytes)
    weights = [WeightLine(c, s, *v) for (c, s), v in lines.items()]
    components = plan_components(spec)  # encoders, projectors, heads (spec.modalities)
    weights += components.weights
    weight_bytes = sum(w.bytes for w in weights)
    per_target = {t: kv_cache_bytes(spec, t) for t in spec.targets.enabled()}
    kv = max(per_target.values(), default=kv_cache_bytes(spec))
    act = max(activation_bytes(spec) + components.embedding_bytes, components.activation_bytes)
    overhead = RUNTIME_BASE_BYTES + int(FRAGMENTATION * (weight_bytes + kv + act))
    total = weight_bytes + kv + act + overhead
    budget = device.memory_budget_mb * MIB
    bandwidth = device.bandwidth_gbps * 1e9
    empty, full = int(round(read)), int(round(read)) + kv
    notes = list(components.notes)
    return MemoryPlan(
        device=device.name, budget_bytes=budget, bandwidth_gbps=device.bandwidth_gbps,
        parameters=sum(w.parameters for w in weights), weights=weights, weight_bytes=weight_bytes,
        kv_cache=spec.quantization.kv_cache, kv_cache_bytes=kv, activation_bytes=act,
        runtime_overhead_bytes=overhead, total_bytes=total, headroom_bytes=budget - total,
        fits=total <= budget, decode_bytes_per_token_empty=empty, decode_bytes_per_token_full=full,
        decode_tokens_per_s_empty=round(bandwidth / empty, 1),
        decode_tokens_per_s_full=round(bandwidth / full, 1), notes=notes,
        placeholder_tokens=components.placeholder_tokens,
        kv_cache_per_target=per_target, layers=layer_runs(spec),
        artifacts=_artifacts(spec, spec_dir) if artifacts else [],
    )


def _artifacts(spec: "ResolvedSpec", spec_dir: "str | None") -> list[dict]:
    from omnic.targets.footprint import plan_artifacts

    return [a.to_dict() for a in plan_artifacts(spec, spec_dir)]


# --- components: encoders, projectors and heads ------------------------------------------------
# Every target stores them unquantized (omnic/targets/components.py `weights_summary`), so
# their weights are planned in fp32. They run once per input, before the decoder's prefill and
# one at a time: the activation peak is the larger of one encoder block's live set and the
# decoder's prefill plus the embeddings the prompt holds. Their placeholder tokens (one per
# embedding row) share the decoder's context_length with the text.
COMPONENT_STORAGE = Schemes.FP32


@dataclass(frozen=True)
class ComponentPlan:
    weights: list[WeightLine]
    activation_bytes: int  # the largest encoder's live set (fp32, batch 1)
    embedding_bytes: int  # every encoder's output rows, held while the decoder prefills
    placeholder_tokens: dict[str, int]
    notes: list[str]


def _encoder_activation(inputs: int, n: int, d: int, heads: int, ffn: int, out_rows: int,
                        proj_in: int, d_out: int) -> int:
    """fp32 bytes of one pre-norm block's live set over n tokens (residual, normed, q/k/v, scores
    and probabilities, context or the FFN's two widths), beside the input; or the projector's."""
    attention = 3 * n * d + 2 * heads * n * n + n * d
    mlp = 2 * n * ffn
    projector = out_rows * (proj_in + 2 * d_out)
    return 4 * (inputs + 2 * n * d + max(attention, mlp, projector))


def plan_components(spec: "ResolvedSpec") -> ComponentPlan:
    """Weight lines, activation estimate and prompt tokens of every component of `spec`."""
    from omnic.spec.component_inventory import component_tensors, placeholder_tokens

    lines: list[WeightLine] = []
    fp32 = TensorScheme(COMPONENT_STORAGE, None, True)
    for name, inventory in component_tensors(spec).items():
        lines.append(WeightLine(name, storage_id(fp32), len(inventory),
                                sum(t.numel for t in inventory),
                                sum(tensor_bytes(t.shape, fp32) for t in inventory)))
    m, d_dec = spec.modalities, spec.model.d_model
    act = []
    if m.vision is not None:
        v = m.vision
        act.append(_encoder_activation(v.channels * v.image_size**2, v.n_positions, v.d_model,
                                       v.n_heads, v.ffn_width, v.n_tokens, v.projector_in, d_dec))
    if m.audio is not None:
        a = m.audio
        act.append(_encoder_activation(a.n_mels * a.n_frames + a.d_model * a.n_frames,
                                       a.n_positions, a.d_model, a.n_heads, a.ffn_width,
                                       a.n_tokens, a.d_model, d_dec))
    if m.sensors is not None:
        s = m.sensors
        act.append(4 * (s.dim + (s.hidden or d_dec) + s.n_tokens * d_dec))
    if m.action_head is not None:
        h = m.action_head
        act.append(4 * (d_dec + h.hidden + h.horizon * h.dim))
    tokens = placeholder_tokens(spec)
    notes = []
    ctx = spec.model.context_length
    if tokens:
        used = sum(tokens.values())
        each = ", ".join(f"{n} {c}" for c, n in tokens.items())
        notes.append(f"prompt: one input of each encoder takes {used} of context_length {ctx} "
                     f"positions ({each}); {ctx - used} are left for text")
        if used >= ctx:
            notes.append(f"context_length {ctx} cannot hold one input of each encoder "
                         f"({used} placeholder tokens)")
    return ComponentPlan(lines, max(act, default=0), 4 * d_dec * sum(tokens.values()), tokens,
                         notes)

