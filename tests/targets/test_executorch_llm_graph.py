"""export_llm's decode graph (omnic/targets/executorch/llm_graph.py), run eagerly against the
decoder it rewrites: ExecuTorch's `llama::update_cache` / `llama::custom_sdpa` have CPU kernels
in PyTorch (libcustom_ops_aot_lib), so each family's rewrite is checked without lowering. The
lowered programs are checked by tests/targets/test_executorch.py and the family conformance.

Reference: `Decoder.forward` with its own static cache, the same prefill, chunked prefill at a
non-zero start and single-token decode. Tolerance 1e-5 on the logits: the two differ only in
summation order (a flash-attention kernel against an explicit softmax).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

from omnic.model import build_model  # noqa: E402
from omnic.targets.executorch.llm_graph import custom_ops_module, why_generic  # noqa: E402
from tiny_specs import TINY_SPEC, make_resolved_spec  # noqa: E402

BASE = {**TINY_SPEC["model"], "head_dim": 16}
FAMILIES: dict[str, dict[str, Any]] = {
    "llama (GQA)": {},
    "qwen3 (per-head qk-norm)": {"qk_norm": True},
    "olmo2 (post-norms, full-width qk-norm)": {
        "qk_norm": True, "qk_norm_width": "full", "pre_norms": False, "post_norms": True},
    "granite (multipliers)": {"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                              "logits_scaling": 8.0, "attn_scale": 0.0078125},
    "phi3 (partial rotary)": {"rope": {"theta": 10000.0, "rotary_dim": 8}},
    "smollm3 (NoPE layers)": {"layer_pattern": ["full", "nope"]},
    "gemma (unit-offset norms, scaled embeddings, GeGLU)": {
        "norm": {"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True},
        "scale_embeddings": True, "ffn": {"kind": "geglu", "hidden": 128}},
    "two RoPE bases (sliding window >= context)": {
        "layer_pattern": "1 sliding : 1 full", "sliding_window": {"size": 64},
        "rope": {"theta": 10000.0, "sliding": {"theta": 500.0}}},
}
PROMPT = np.random.default_rng(3).integers(0, 320, 12)


def _decoder(model: dict[str, Any]):
    spec = make_resolved_spec(BASE, model, weights={"source": "random", "seed": 0})
    return build_model(spec, Path(".")).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_custom_ops_graph_computes_the_decoder(family):
    decoder = _decoder(FAMILIES[family])
    assert why_generic(decoder) is None
    graph = custom_ops_module(copy.deepcopy(decoder), torch.float32)
    k, v = decoder.empty_cache()
    tokens = torch.as_tensor(PROMPT)[None]
    with torch.no_grad():
        for start, stop in ((0, 5), (5, 11), (11, 12)):  # prefill, a chunk at 5, one step
            got = graph(tokens[:, start:stop], torch.tensor([start]))
            want, k, v = decoder(tokens[:, start:stop], torch.arange(start, stop), k, v)
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model, reason", [
    ({"layer_pattern": "1 sliding : 1 full", "sliding_window": {"size": 8}}, "ring caches"),
    ({"attn_softcap": 50.0}, "soft-capping"),
])
def test_what_custom_sdpa_cannot_express_keeps_the_generic_graph(model, reason):
    assert reason in why_generic(_decoder(model))
