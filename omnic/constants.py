"""Names that outlive a release: target ids, scheme ids, roles, components, manifest keys.

Every string that is written into a file a user keeps (spec, manifest, GGUF metadata) or that a
user types (scheme ids, target ids) is defined here once. Renaming one is a format change.
"""

from __future__ import annotations

SPEC_FORMAT_VERSION = 1
MANIFEST_FORMAT_VERSION = 1


class Targets:
    ONNX = "onnx"
    GGUF = "gguf"
    EXECUTORCH = "executorch"
    COREML = "coreml"
    TVM = "tvm"
    ALL = (ONNX, GGUF, EXECUTORCH, COREML, TVM)


class Schemes:
    """Weight storage schemes a spec may ask for (`quantization.weights.scheme`)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # per-output-channel (group_size null) or group-wise, weight only
    INT4 = "int4"  # group-wise, symmetric or asymmetric
    ALL = (FP32, FP16, BF16, INT8, INT4)


class KVCache:
    NONE = "none"
    INT8 = "int8"
    ALL = (NONE, INT8)


class Roles:
    """What a tensor does; quantization overrides match on these."""

    EMBEDDING = "embedding"
    ATTENTION = "attention"
    CONV = "conv"  # a short_conv layer's projections and kernel (LFM2)
    SSM = "ssm"  # a mamba2 or gated_deltanet layer's projections, convolution, state parameters
    FFN = "ffn"
    ROUTER = "router"
    NORM = "norm"
    LM_HEAD = "lm_head"
    VISION = "vision"
    AUDIO = "audio"
    SENSORS = "sensors"
    PROJECTOR = "projector"
    ACTION = "action"
    ALL = (EMBEDDING, ATTENTION, CONV, SSM, FFN, ROUTER, NORM, LM_HEAD, VISION, AUDIO, SENSORS,
           PROJECTOR, ACTION)


class Components:
    DECODER = "decoder"
    VISION_ENCODER = "vision_encoder"
    AUDIO_ENCODER = "audio_encoder"
    SENSOR_PROJECTOR = "sensor_projector"
    ACTION_HEAD = "action_head"
    ALL = (DECODER, VISION_ENCODER, AUDIO_ENCODER, SENSOR_PROJECTOR, ACTION_HEAD)


class Placeholders:
    """Prompt placeholders: each is expanded to one token per embedding its encoder yields, and
    those tokens' input embeddings are replaced by the encoder's output rows (`omnic run`).

    The byte tokenizer reserves its first `<unused_N>` ids for them: `<image>` = `<unused_0>`
    (id 259), `<audio>` = `<unused_1>` (260), `<sensor>` = `<unused_2>` (261). Its tokenizer.json
    keeps the `<unused_N>` names, so text-only builds are unchanged. A Hugging Face tokenizer
    must have the token itself (LLaVA's `<image>`, for example) or be given another name
    (`omnic run --image-token`).
    """

    IMAGE = "<image>"
    AUDIO = "<audio>"
    SENSOR = "<sensor>"
    # encoder component -> its placeholder
    BY_COMPONENT = {
        Components.VISION_ENCODER: IMAGE,
        Components.AUDIO_ENCODER: AUDIO,
        Components.SENSOR_PROJECTOR: SENSOR,
    }
    BYTE_SLOTS = {IMAGE: 0, AUDIO: 1, SENSOR: 2}  # N of the byte tokenizer's <unused_N>


class GoldenStatus:
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not_run"


class ManifestKeys:
    OMNIC_VERSION = "omnic_version"
    FORMAT = "manifest_format"
    SPEC = "spec"
    SPEC_SHA256 = "spec_sha256"
    TOOLCHAIN = "toolchain"
    MEMORY_PLAN = "memory_plan"
    PASSES = "passes"
    ARTIFACTS = "artifacts"
    TIMINGS = "timings"


# Canonical tensor names of the decoder (see omnic/spec/inventory.py). Builders, importers and
# every target use these; `{i}` is the layer index, `{e}` the expert index.
class TensorNames:
    EMBED = "embed.weight"
    FINAL_NORM = "norm.weight"
    LM_HEAD = "lm_head.weight"
    ATTN_NORM = "layers.{i}.attn_norm.weight"
    FFN_NORM = "layers.{i}.ffn_norm.weight"
    POST_ATTN_NORM = "layers.{i}.post_attn_norm.weight"  # Gemma 2 sandwich norms
    POST_FFN_NORM = "layers.{i}.post_ffn_norm.weight"
    Q = "layers.{i}.attn.q.weight"
    K = "layers.{i}.attn.k.weight"
    V = "layers.{i}.attn.v.weight"
    O = "layers.{i}.attn.o.weight"  # noqa: E741  (the projection is called o)
    Q_BIAS = "layers.{i}.attn.q.bias"
    K_BIAS = "layers.{i}.attn.k.bias"
    V_BIAS = "layers.{i}.attn.v.bias"
    Q_NORM = "layers.{i}.attn.q_norm.weight"
    K_NORM = "layers.{i}.attn.k_norm.weight"
    # a short_conv layer (LFM2): in_proj [3 * d, d] makes B, C and x; the depthwise kernel is
    # [d, 1, kernel] as torch's Conv1d holds it (3-D: never taken for a matrix to quantize)
    CONV_IN = "layers.{i}.conv.in_proj.weight"
    CONV_KERNEL = "layers.{i}.conv.kernel.weight"
    CONV_OUT = "layers.{i}.conv.out_proj.weight"
    # a mamba2 layer (Granite 4): in_proj [2 * inner + 2 * groups * d_state + heads, d] makes
    # z, x, B, C and dt in that order; the depthwise convolution over x, B and C is
    # [channels, 1, kernel] (3-D, as torch's Conv1d holds it); A_log, D and dt_bias have one
    # value per head; norm is the gated RMSNorm's weight [inner]
    SSM_IN = "layers.{i}.ssm.in_proj.weight"
    SSM_CONV = "layers.{i}.ssm.conv.weight"
    SSM_CONV_BIAS = "layers.{i}.ssm.conv.bias"
    SSM_DT_BIAS = "layers.{i}.ssm.dt_bias"
    SSM_A_LOG = "layers.{i}.ssm.A_log"
    SSM_D = "layers.{i}.ssm.D"
    SSM_NORM = "layers.{i}.ssm.norm.weight"
    SSM_OUT = "layers.{i}.ssm.out_proj.weight"
    # a gated_deltanet layer (Qwen3.5): qkv [2 * key_width + value_width, d] makes q, k and v in
    # that order (the convolution [channels, 1, kernel] runs over all three, no bias); z the
    # output gate [value_width, d]; b (beta) and a (decay input) one row per value head; A_log
    # and dt_bias one value per value head; norm the gated RMSNorm's weight [value_dim], shared
    # by the heads and applied as is (no unit offset)
    DN_QKV = "layers.{i}.deltanet.qkv.weight"
    DN_Z = "layers.{i}.deltanet.z.weight"
    DN_B = "layers.{i}.deltanet.b.weight"
    DN_A = "layers.{i}.deltanet.a.weight"
    DN_CONV = "layers.{i}.deltanet.conv.weight"
    DN_DT_BIAS = "layers.{i}.deltanet.dt_bias"
    DN_A_LOG = "layers.{i}.deltanet.A_log"
    DN_NORM = "layers.{i}.deltanet.norm.weight"
    DN_OUT = "layers.{i}.deltanet.out_proj.weight"
    # the attention output gate (Qwen3.5): o(attn * sigmoid(gate x)), [n_heads * head_dim, d]
    ATTN_GATE = "layers.{i}.attn.gate.weight"
    GATE = "layers.{i}.ffn.gate.weight"
    UP = "layers.{i}.ffn.up.weight"
    DOWN = "layers.{i}.ffn.down.weight"
    ROUTER = "layers.{i}.ffn.router.weight"
    EXPERT_GATE = "layers.{i}.ffn.experts.{e}.gate.weight"
    EXPERT_UP = "layers.{i}.ffn.experts.{e}.up.weight"
    EXPERT_DOWN = "layers.{i}.ffn.experts.{e}.down.weight"
    SHARED_GATE = "layers.{i}.ffn.shared.gate.weight"
    SHARED_UP = "layers.{i}.ffn.shared.up.weight"
    SHARED_DOWN = "layers.{i}.ffn.shared.down.weight"


class GgufKeys:
    """Metadata keys omnic adds to the GGUF files it writes (llama.cpp ignores unknown keys)."""

    VERSION = "omnic.version"  # omnic package version that wrote the file
    # sha256 of the canonical JSON of `omnic.spec`; not the manifest's spec_sha256, which hashes
    # the whole resolved spec (every target's options, files by path)
    SPEC_SHA256 = "omnic.spec_sha256"
    # the resolved spec as it reaches the file, canonical JSON: its own target's options only,
    # files by content (omnic.targets.gguf.write.embedded_spec)
    SPEC = "omnic.spec"
    FILE_TYPE = "omnic.file_type"  # targets.gguf.file_type as resolved (auto -> Q4_0, ...)
