"""omnic's RoPE frequencies equal transformers' ROPE_INIT_FUNCTIONS bit for bit."""

from __future__ import annotations

import pytest
import torch

from omnic.model.modules.rope import Rope, rope_frequencies

CASES = [
    ("default", None, {"rope_type": "default"}),
    ("linear", {"kind": "linear", "factor": 4.0}, {"rope_type": "linear", "factor": 4.0}),
    ("llama3", {"kind": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_context_length": 8192},
     {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}),
    ("yarn", {"kind": "yarn", "factor": 4.0, "original_context_length": 32768},
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    ("yarn_custom", {"kind": "yarn", "factor": 8.0, "original_context_length": 4096,
                     "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25},
     {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
      "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25}),
]


@pytest.mark.parametrize("head_dim,theta", [(64, 500000.0), (128, 1000000.0), (16, 10000.0)])
@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_frequencies_match_transformers(name, ours, theirs, head_dim, theta):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=131072,
                         rope_parameters={**theirs, "rope_theta": theta})
    kind = theirs["rope_type"]
    if kind == "default":
        ref = (1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float()
                                / head_dim)), 1.0)
    else:
        ref = ROPE_INIT_FUNCTIONS[kind](config, None)
    inv_freq, factor = rope_frequencies(head_dim, theta, ours)
    assert inv_freq.dtype == torch.float32
    assert torch.equal(inv_freq, ref[0].float())
    assert factor == pytest.approx(ref[1], rel=1e-15)


def test_tables_apply_attention_factor():
    scaling = {"kind": "yarn", "factor": 4.0, "original_context_length": 64}
    rope = Rope(16, 10000.0, scaling, 32)
    inv_freq, factor = rope_frequencies(16, 10000.0, scaling)
    assert factor > 1.0
    angle = 5 * inv_freq[3]
    assert torch.isclose(rope.cos[5, 3], torch.cos(angle) * factor)
    assert torch.isclose(rope.sin[5, 3 + 8], torch.sin(angle) * factor)  # rotate_half layout
