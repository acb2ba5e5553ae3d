"""The memory plan: exact parameter counts and bytes, KV cache, tokens/s ceiling, fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnic.compiler.plan import MIB, kv_cache_bytes, plan_memory, tensor_bytes
from omnic.presets import resolve, store
from omnic.quant.select import TensorScheme, storage_id
from omnic.spec import Device, Spec
from omnic.spec.inventory import parameter_count

ROOT = Path(__file__).resolve().parents[2]

# Published parameter counts (model cards / safetensors metadata on the Hugging Face Hub).
PUBLISHED = {
    "llama3.2_1b": 1_235_814_400,   # https://huggingface.co/meta-llama/Llama-3.2-1B
    "smollm_135m": 134_515_008,     # https://huggingface.co/HuggingFaceTB/SmolLM-135M
    "smollm_360m": 361_821_120,     # https://huggingface.co/HuggingFaceTB/SmolLM-360M
    "qwen2.5_0.5b": 494_032_768,    # https://huggingface.co/Qwen/Qwen2.5-0.5B
    "tinyllama_1.1b": 1_100_048_384,  # https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0
    "qwen3_0.6b": 596_049_920,      # https://huggingface.co/Qwen/Qwen3-0.6B ("0.44B non-embedding")
}


def closed_form(m) -> int:
    """Independent count from the llama-family formula (not from the tensor inventory)."""
    hd, kv = m["head_dim"], m["n_kv_heads"]
    d, h, f, v = m["d_model"], m["n_heads"], m["ffn"]["hidden"], m["vocab_size"]
    attn = d * h * hd * 2 + d * kv * hd * 2
    bias = (h * hd + 2 * kv * hd) if m.get("qkv_bias") else 0
    qk_norm = 2 * hd if m.get("qk_norm") else 0
    per_layer = attn + bias + qk_norm + 3 * d * f + 2 * d
    return v * d * (1 if m["tie_embeddings"] else 2) + m["n_layers"] * per_layer + d


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_figures(name):
    raw = store.load_raw("model", name)
    model = store.load("model", name)
    assert parameter_count(model) == PUBLISHED[name]
    assert closed_form(raw) == PUBLISHED[name]


def test_qwen3_non_embedding_count_matches_model_card():
    model = store.load("model", "qwen3_0.6b")
    assert round((parameter_count(model) - 151936 * 1024) / 1e9, 2) == 0.44


@pytest.mark.parametrize("shape, ts, expected", [
    ((64, 128), TensorScheme("int4", 32, True), 64 * 64 + 64 * 4 * 2),          # 0.5 B + fp16/group
    ((64, 128), TensorScheme("int4", 32, False), 64 * 64 + 256 * 2 + 256 // 2),  # + uint4 zeros
    # per-row fp16 scale
    ((10, 7), TensorScheme("int8", None, True), 70 + 10 * 2),
    ((4, 64), TensorScheme("int8", 32, False), 256 + 8 * 2 + 8),                 # + uint8 zeros
    ((2, 3), TensorScheme("int4", 3, True), 2 * 2 + 2 * 2),                      # odd rows padded
    ((3, 5), TensorScheme("fp16", None, True), 30),
    ((3, 5), TensorScheme("bf16", None, True), 30),
    ((3, 5), TensorScheme("fp32", None, True), 60),
    ((7,), TensorScheme("fp32", None, True), 28),
])
def test_tensor_bytes(shape, ts, expected):
    assert tensor_bytes(shape, ts) == expected


def test_storage_ids():
    assert storage_id(TensorScheme("int4", 32, True)) == "int4_g32"
    assert storage_id(TensorScheme("int4", 128, False)) == "int4_g128_asym"
    assert storage_id(TensorScheme("int8", None, True)) == "int8_channel"
    assert storage_id(TensorScheme("fp16", None, True)) == "fp16"


@pytest.fixture(scope="module")
def pocket():
    from omnic.compiler.validate import load_resolved

    return load_resolved(ROOT / "specs" / "mobile_2gb.yaml")


def test_pocket_chat_plan_by_hand(pocket):
    plan = plan_memory(pocket)
    d, L, V, F, kv_out = 384, 6, 4096, 1024, 2 * 64
    embed = V * d + V * 2                              # int8 per channel + fp16 row scales
    per_layer_params = 2 * d * d + 2 * kv_out * d + 3 * d * F
    int4 = per_layer_params * L // 2 + per_layer_params * L // 32 * 2
    norms = (2 * L + 1) * d * 4
    by_storage = {w.storage: w.bytes for w in plan.weights}
    assert by_storage == {"int8_channel": embed, "int4_g32": int4, "fp32": norms}
    assert plan.parameters == V * d + L * (per_layer_params + 2 * d) + d == 11_015_040
    kv = 2 * L * 2 * 64 * 512 * 4                         # fp32 K and V at context_length
    assert plan.kv_cache_bytes == kv == 3 * MIB
    # tied embedding: read whole as the lm_head every token
    assert plan.decode_bytes_per_token_empty == embed + int4 + norms
    assert plan.decode_tokens_per_s_empty == round(12.0e9 / (embed + int4 + norms), 1)
    assert plan.decode_tokens_per_s_full == round(12.0e9 / (embed + int4 + norms + kv), 1)
    assert plan.total_bytes == (plan.weight_bytes + kv + plan.activation_bytes
                                + plan.runtime_overhead_bytes)
    assert plan.fits and plan.headroom_bytes == 1400 * MIB - plan.total_bytes


def test_int8_kv_cache_bytes(pocket):
    q = pocket.quantization.model_copy(update={"kv_cache": "int8"})
    spec = pocket.model_copy(update={"quantization": q})
    assert kv_cache_bytes(spec) == 2 * 6 * 2 * 512 * (64 + 2)


def test_untied_embedding_reads_one_row(pocket):
    spec = pocket.model_copy(
        update={"model": pocket.model.model_copy(update={"tie_embeddings": False})})
    plan = plan_memory(spec)
    embed = 4096 * 384 + 4096 * 2
    # int4 g32 by default (the override is role embedding)
    lm_head = 4096 * 384 // 2 + 4096 * 384 // 32 * 2
    assert plan.weight_bytes == plan_memory(pocket).weight_bytes + lm_head
    assert plan.decode_bytes_per_token_empty == plan_memory(pocket).decode_bytes_per_token_empty \
        - embed + round(embed / 4096) + lm_head


def test_plan_against_another_device(pocket):
    tiny = Device(name="tiny", memory_budget_mb=16, bandwidth_gbps=1.0, os="linux")
    plan = plan_memory(pocket, tiny)
    assert not plan.fits and plan.headroom_bytes < 0 and plan.device == "tiny"


def test_moe_reads_only_top_k_experts():
    spec = resolve(Spec.model_validate({
        "omnic": 1, "name": "moe", "device": "desktop_cpu", "targets": {"onnx": {}},
        "model": {"vocab_size": 300, "d_model": 64, "n_layers": 1, "n_heads": 4,
                  "ffn": {"kind": "swiglu", "hidden": 32}, "context_length": 16,
                  "tie_embeddings": True, "moe": {"experts": 4, "top_k": 1}},
    }), ".")
    plan = plan_memory(spec)
    expert_bytes = 4 * 3 * 64 * 32 * 4
    assert plan.decode_bytes_per_token_empty == plan.weight_bytes - expert_bytes + expert_bytes // 4


def test_plan_is_json_able(pocket):
    import json

    data = json.loads(json.dumps(plan_memory(pocket).to_dict()))
    assert data["weights"][0]["component"] == "decoder" and data["assumptions"]["kv_cache"]
