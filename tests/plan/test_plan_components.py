"""The memory plan counts every component: encoder, projector and head weights (fp32, as every
target stores them), the encoders' activations, and their placeholder tokens in the context.

Parameter counts are closed forms written from the architectures (SigLIP/ViT blocks, Whisper's
convolutions, 2-layer MLPs), not read back from the tensor inventory the plan uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from omnic.compiler.plan import MIB, plan_memory
from omnic.spec import Device
from tiny_specs import make_resolved_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 128}


def vit_block(d: int, f: int) -> int:
    """One pre-norm block: 2 LayerNorms, q/k/v/o with biases, up/down with biases."""
    return 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)


def mlp2(d_in: int, d_hidden: int, d_out: int) -> int:
    return d_in * d_hidden + d_hidden + d_hidden * d_out + d_out


@pytest.fixture(scope="module")
def vlm():
    from omnic.compiler.validate import load_resolved

    return load_resolved(ROOT / "specs" / "vision_4gb.yaml")


def test_vision_4gb_counts_the_siglip_tower_and_projector(vlm):
    plan = plan_memory(vlm)
    d, f, grid, r, d_dec = 768, 3072, 512 // 16, 4, 576
    tower = (d * 3 * 16 * 16 + d) + grid**2 * d + 12 * vit_block(d, f) + 2 * d
    assert tower == 86_433_024  # SigLIP-base-patch16-512's vision tower without its pooling head
    projector = mlp2(d * r * r, d_dec, d_dec)
    (line,) = [w for w in plan.weights if w.component == "vision_encoder"]
    assert (line.storage, line.parameters, line.bytes) == ("fp32", tower + projector,
                                                           4 * (tower + projector))
    text_only = plan_memory(vlm.model_copy(update={"modalities": type(vlm.modalities)()}))
    assert [w for w in plan.weights if w.component == "decoder"] == text_only.weights
    assert plan.weight_bytes == text_only.weight_bytes + line.bytes
    assert plan.parameters == 134_515_008 + tower + projector
    # encoders run once per input: the decode ceiling reads the decoder only
    assert plan.decode_bytes_per_token_empty == text_only.decode_bytes_per_token_empty
    assert plan.fits and plan.total_bytes < 2000 * MIB


def test_vision_activations_hold_one_blocks_attention_scores(vlm):
    plan = plan_memory(vlm)
    n, heads, d = 1024, 12, 768
    scores = 2 * heads * n * n * 4  # scores and probabilities of one block, fp32
    assert scores <= plan.activation_bytes <= scores + 16 * n * d * 4 + 3 * 512 * 512 * 4
    text_only = plan_memory(vlm.model_copy(update={"modalities": type(vlm.modalities)()}))
    assert plan.activation_bytes > text_only.activation_bytes


def test_image_tokens_are_counted_against_the_context(vlm):
    plan = plan_memory(vlm)
    assert plan.placeholder_tokens == {"vision_encoder": (32 // 4) ** 2}
    assert any("64 of context_length 2048" in n and "1984" in n for n in plan.notes)
    small = vlm.model_copy(update={"model": vlm.model.model_copy(update={"context_length": 64})})
    assert any("cannot hold" in n for n in plan_memory(small).notes)
    assert not any("not planned" in n for n in plan.notes)


def test_every_modality_has_its_line():
    spec = make_resolved_spec(TINY, modalities={
        "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "d_model": 32,
                   "n_layers": 2, "n_heads": 2, "projector": "linear"},
        "audio": {"n_mels": 16, "n_frames": 40, "d_model": 32, "n_layers": 1, "n_heads": 2,
                  "projector": "mlp"},
        "sensors": {"dim": 7, "n_tokens": 2, "projector": "mlp", "hidden": 48},
        "action_head": {"dim": 6, "horizon": 4, "hidden": 40},
    })
    plan = plan_memory(spec)
    by = {w.component: w for w in plan.weights if w.component != "decoder"}
    d = 32
    vision = (d * 3 * 8 * 8 + d) + 16 * d + 2 * vit_block(d, 4 * d) + 2 * d + (d * 64 + 64)
    # Whisper: conv1 (n_mels -> d, k3), conv2 (d -> d, k3), positions, blocks (k without bias),
    # final LayerNorm, then the projector
    audio = (16 * d * 3 + d) + (d * d * 3 + d) + 20 * d + vit_block(d, 4 * d) - d + 2 * d \
        + mlp2(d, 64, 64)
    assert {c: w.parameters for c, w in by.items()} == {
        "vision_encoder": vision, "audio_encoder": audio,
        "sensor_projector": mlp2(7, 48, 2 * 64), "action_head": mlp2(64, 40, 4 * 6)}
    assert all(w.storage == "fp32" and w.bytes == 4 * w.parameters for w in by.values())
    assert plan.placeholder_tokens == {"vision_encoder": 16, "audio_encoder": 20,
                                       "sensor_projector": 2}
    assert json.loads(json.dumps(plan.to_dict()))["placeholder_tokens"]["audio_encoder"] == 20


def test_components_can_break_the_fit(vlm):
    # a budget the decoder fits in, the decoder plus a 358 MiB fp32 tower does not
    text_only = plan_memory(vlm.model_copy(update={"modalities": type(vlm.modalities)()}))
    device = Device(name="tight", memory_budget_mb=text_only.total_bytes // MIB + 50,
                    bandwidth_gbps=10.0, os="linux")
    assert plan_memory(vlm.model_copy(update={"modalities": type(vlm.modalities)()}), device).fits
    assert not plan_memory(vlm, device).fits


def test_omnic_plan_shows_each_component():
    out = subprocess.run([sys.executable, "-m", "omnic.cli.main", "plan",
                          str(ROOT / "specs" / "vision_4gb.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "vision_encoder" in out.stdout and "decoder" in out.stdout
