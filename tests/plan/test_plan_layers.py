"""The memory plan follows the per-layer table: window-sized caches for sliding layers where the
target keeps them, counted by hand here from the published Gemma 3 270M shape."""

from __future__ import annotations

import pytest

from omnic.compiler.plan import MIB, plan_memory
from omnic.presets import store
from omnic.spec import Model, ResolvedSpec
from omnic.presets.resolve import explicit_model

ALL = {"onnx": {}, "gguf": {}, "executorch": {}, "coreml": {}, "tvm": {}}


def _gemma3_270m(context: int = 4096, **targets) -> ResolvedSpec:
    model = Model.model_validate({**store.load_raw("model", "gemma3_270m"),
                                  "context_length": context})
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "g3", "model": explicit_model(model).model_dump(),
        "weights": {"source": "random", "seed": 0}, "tokenizer": {"kind": "byte"},
        "device": store.load("device", "mobile_2gb").model_dump(),
        "quantization": store.load("quantization", "int4_g32").model_dump(),
        "targets": targets or ALL,
    })


def test_gemma3_270m_int4_fits_mobile_2gb_with_window_sized_caches():
    spec = _gemma3_270m()
    plan = plan_memory(spec)
    # 18 layers, 1 KV head of 256 dims, fp32 K and V: 2 * 256 * 4 = 2048 bytes per position
    per_position = 2 * 1 * 256 * 4
    sliding, full = 15, 3
    ring = per_position * (sliding * 512 + full * 4096)
    assert plan.kv_cache_per_target["executorch"] == ring == plan.kv_cache_per_target["tvm"]
    # llama.cpp: SWA cells = pad256(min(4096, 512 + n_ubatch 512)) = 1024 per sliding layer
    assert plan.kv_cache_per_target["gguf"] == per_position * (sliding * 1024 + full * 4096)
    # onnxruntime-genai's windowed cache: window + 16 on CPU (every layer fuses: head_dim 256)
    assert plan.kv_cache_per_target["onnx"] == per_position * (sliding * 528 + full * 4096)
    assert plan.kv_cache_bytes == max(plan.kv_cache_per_target.values())
    assert plan.fits and plan.total_bytes < 1400 * MIB
    runs = [(r["layers"], r["attention"], r["window"]) for r in plan.layers]
    assert runs[:2] == [("0-4", "sliding", 512), ("5", "full", None)] and len(runs) == 6
    assert plan.layers[0]["kv_positions"]["executorch"] == 512
    assert plan.layers[1]["kv_positions"]["executorch"] == 4096


@pytest.mark.parametrize("context", [256, 512])
def test_a_window_as_long_as_the_context_keeps_no_ring(context):
    spec = _gemma3_270m(context, executorch={})
    plan = plan_memory(spec)
    assert plan.kv_cache_bytes == 2 * 256 * 4 * 18 * context
