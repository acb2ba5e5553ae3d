"""Qwen3.5 as it is released, a Qwen3_5ForConditionalGeneration: omnic imports its text decoder
(`text_config`, the `model.language_model.*` tensors), leaves the vision tower and equals
transformers' own model of that checkpoint on text."""

from __future__ import annotations

import json

import numpy as np
import torch

from omnic.cli.main import main
from omnic.compiler.validate import load_resolved
from omnic.model import build_model
from omnic.runtime.generate import greedy
from omnic.runtime.torch_runner import TorchRunner

from hf_checkpoints import make_qwen35_vl_checkpoint

PROMPT = [256, 12, 250, 99, 7, 45, 3, 510, 128, 64]


def test_the_released_layout_imports_its_text_decoder(tmp_path):
    import transformers

    ckpt = make_qwen35_vl_checkpoint(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    spec_path = tmp_path / "q.yaml"
    assert main(["import", str(ckpt), "-o", str(spec_path)]) == 0
    spec = load_resolved(spec_path)
    m = spec.model
    assert (m.d_model, m.n_layers, m.gated_deltanet.value_heads, m.rope.rotary_dim) == (
        config["text_config"]["hidden_size"], 4, 4, 8)
    assert m.attn_output_gate and m.norm.unit_offset and m.tie_embeddings
    decoder = build_model(spec, spec_path.parent)

    hf = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(ckpt).eval()
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([PROMPT])).logits[0].numpy()
    assert np.abs(want).max() > 1.0
    _, logits = greedy(TorchRunner(decoder), PROMPT, 1)
    assert np.abs(logits - want).max() < 1e-4
