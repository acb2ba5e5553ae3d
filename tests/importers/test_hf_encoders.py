"""Encoder towers imported from Hugging Face directories match transformers (fp32, 1e-4).

Tiny random SigLIP / CLIP vision towers and Whisper encoders are built with transformers,
every parameter perturbed (so LayerNorms are not at their 1/0 init and a swapped norm or
projection shows), saved with save_pretrained, imported through a spec, and the tower's output is
compared with transformers' `last_hidden_state`. 1e-4: both sides compute in fp32 with the same
op order up to matmul blocking; measured differences are ~1e-6.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omnic.model.components import build_components
from omnic.constants import Components
from omnic.importers.hf_encoders import EncoderMismatch

from tiny_specs import make_resolved_spec

TINY = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "head_dim": 16, "ffn": {"kind": "swiglu", "hidden": 128},
        "norm": {"kind": "rmsnorm", "eps": 1e-5},
        "rope": {"theta": 10000.0}, "context_length": 64, "tie_embeddings": True}
TOL = 1e-4

VISION_HF = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
VISION_SPEC = {"image_size": 32, "patch_size": 8, "d_model": 48, "n_layers": 2, "n_heads": 4,
               "ffn_hidden": 96}
WHISPER_HF = {"d_model": 32,
              "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
              "decoder_layers": 1, "decoder_attention_heads": 4, "decoder_ffn_dim": 64,
              "num_mel_bins": 16, "max_source_positions": 20, "vocab_size": 100,
              "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3, "decoder_start_token_id": 2}
AUDIO_SPEC = {"n_mels": 16, "n_frames": 40, "d_model": 32, "n_layers": 2, "n_heads": 4,
              "ffn_hidden": 64}


def _perturb_and_save(model, out: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.15)
    model.eval()
    model.save_pretrained(out)
    return out


def _hf_model(kind: str):
    import transformers as T

    eager = {"attn_implementation": "eager"}
    if kind == "siglip":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**VISION_HF, **eager))
    if kind == "siglip_full":
        return T.SiglipModel(T.SiglipConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "vocab_size": 100},
            vision_config=VISION_HF, **eager))
    if kind == "clip":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**VISION_HF, **eager))
    if kind == "clip_full":
        return T.CLIPModel(T.CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "vocab_size": 100},
            vision_config=VISION_HF, **eager))
    if kind == "whisper_encoder":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(T.WhisperConfig(**WHISPER_HF, **eager))
    if kind == "whisper_full":
        return T.WhisperForConditionalGeneration(T.WhisperConfig(**WHISPER_HF, **eager))
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("hf_encoders")
    out = {}
    for i, kind in enumerate(["siglip", "siglip_full", "clip", "clip_full",
                              "whisper_encoder", "whisper_full"]):
        torch.manual_seed(i)
        model = _hf_model(kind)
        out[kind] = (_perturb_and_save(model, root / kind, 100 + i), model)
    return out


def _spec(tmp: Path, **modalities):
    return make_resolved_spec(TINY, modalities=modalities), tmp


def _vision_reference(kind: str, model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if kind.endswith("_full"):
            return model.vision_model(pixel_values=pixels).last_hidden_state
        return model(pixel_values=pixels).last_hidden_state


@pytest.mark.parametrize("kind", ["siglip", "siglip_full", "clip", "clip_full"])
def test_vision_tower_matches_transformers(hf_dirs, kind):
    hf_dir, model = hf_dirs[kind]
    family = kind.split("_")[0]
    spec = make_resolved_spec(TINY, modalities={"vision": {**VISION_SPEC, "kind": family,
                                                           "weights": str(hf_dir)}})
    c = build_components(spec, Path("/nonexistent"))[Components.VISION_ENCODER]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ours = c.module.tower(pixels)
    want = _vision_reference(kind, model, pixels)
    assert ours.shape == want.shape == (1, 16 + (family == "clip"), 48)
    torch.testing.assert_close(ours, want, rtol=0, atol=TOL)
    # the whole component is the projector applied to those tokens (class token dropped for CLIP)
    tokens = want[:, 1:] if family == "clip" else want
    torch.testing.assert_close(c.module(pixels), c.module.projector(tokens), rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["whisper_encoder", "whisper_full"])
def test_whisper_encoder_matches_transformers(hf_dirs, kind):
    hf_dir, model = hf_dirs[kind]
    spec = make_resolved_spec(TINY, modalities={"audio": {**AUDIO_SPEC, "weights": str(hf_dir)}})
    c = build_components(spec, Path("/nonexistent"))[Components.AUDIO_ENCODER]
    mels = torch.randn(1, 16, 40, generator=torch.Generator().manual_seed(6))
    encoder = model.model.encoder if kind == "whisper_full" else model
    with torch.no_grad():
        want = encoder(mels).last_hidden_state
    ours = c.module.tower(mels)
    assert ours.shape == want.shape == (1, 20, 32)
    torch.testing.assert_close(ours, want, rtol=0, atol=TOL)


def test_projector_stays_seeded_random(hf_dirs):
    hf_dir, _ = hf_dirs["siglip"]
    imported = make_resolved_spec(TINY, modalities={"vision": {**VISION_SPEC, "kind": "siglip",
                                                               "weights": str(hf_dir)}})
    random = make_resolved_spec(TINY, modalities={"vision": {**VISION_SPEC, "kind": "siglip"}})
    a = build_components(imported, Path("."))[Components.VISION_ENCODER].module.state_dict()
    b = build_components(random, Path("."))[Components.VISION_ENCODER].module.state_dict()
    for key in a:
        same = torch.equal(a[key], b[key])
        assert same == key.startswith("projector."), key


def test_relative_weights_path_is_resolved_against_the_spec_dir(hf_dirs):
    hf_dir, _ = hf_dirs["whisper_encoder"]
    spec = make_resolved_spec(TINY, modalities={"audio": {**AUDIO_SPEC, "weights": hf_dir.name}})
    c = build_components(spec, hf_dir.parent)[Components.AUDIO_ENCODER]
    assert c.module(c.example_input).shape == (1, 20, 64)


@pytest.mark.parametrize("section, changes, expected", [
    ("vision", {"d_model": 64, "n_heads": 4},
     ["modalities.vision.d_model is 64 but config.json hidden_size is 48"]),
    ("vision", {"kind": "clip", "patch_size": 4},
     ["modalities.vision.kind is 'clip' but config.json model_type is 'siglip'",
      "modalities.vision.patch_size is 4 but config.json patch_size is 8",
      "modalities.vision.activation is 'quick_gelu' but config.json hidden_act is 'gelu_tanh'"]),
    ("vision", {"layer_norm_eps": 1e-5}, ["modalities.vision.layer_norm_eps is 1e-05"]),
    ("audio", {"n_frames": 60},
     ["modalities.audio.n_frames is 60 but config.json 2 * max_source_positions is 40"]),
    ("audio", {"ffn_hidden": None},
     ["modalities.audio.ffn_hidden is 128 but config.json encoder_ffn_dim is 64"]),
])
def test_disagreeing_spec_is_refused_naming_fields(hf_dirs, section, changes, expected):
    if section == "vision":
        hf_dir, base = hf_dirs["siglip"][0], {**VISION_SPEC, "kind": "siglip"}
    else:
        hf_dir, base = hf_dirs["whisper_encoder"][0], AUDIO_SPEC
    spec = make_resolved_spec(TINY,
                              modalities={section: {**base, **changes, "weights": str(hf_dir)}})
    with pytest.raises(EncoderMismatch) as err:
        build_components(spec, Path("."))
    for words in expected:
        assert words in str(err.value)


def test_wrong_family_is_refused(hf_dirs):
    spec = make_resolved_spec(
        TINY, modalities={"vision": {**VISION_SPEC, "weights": str(hf_dirs["whisper_encoder"][0])}})
    with pytest.raises(EncoderMismatch,
                       match=r"modalities\.vision\.weights: .* holds WhisperEncoder"):
        build_components(spec, Path("."))


def _write_spec(tmp_path: Path, modalities: dict) -> Path:
    import yaml

    data = {"omnic": 1, "name": "mm", "device": "desktop_cpu",
            "model": {k: v for k, v in TINY.items() if k not in ("norm", "rope")},
            "modalities": modalities, "targets": {},
            "golden": {"cases": 1, "prompt_tokens": 8, "decode_steps": 4}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_validate_reports_config_mismatch_without_torch(hf_dirs, tmp_path):
    import subprocess
    import sys

    hf_dir = hf_dirs["clip"][0]
    good = _write_spec(tmp_path, {"vision": {**VISION_SPEC, "kind": "clip",
                                             "weights": str(hf_dir)}})
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = _write_spec(bad_dir, {"vision": {**VISION_SPEC, "kind": "clip", "n_layers": 3,
                                           "weights": str(hf_dir)}})
    code = ("import sys; from omnic.compiler.validate import validate_file\n"
            f"good = validate_file({str(good)!r}); bad = validate_file({str(bad)!r})\n"
            "print([str(d) for d in good.errors]); "
            "print([(d.field, d.message) for d in bad.errors])\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    good_errors, bad_errors, torch_loaded = out.stdout.strip().splitlines()
    assert good_errors == "[]"
    assert "modalities.vision.weights" in bad_errors
    assert "modalities.vision.n_layers is 3 but config.json num_hidden_layers is 2" in bad_errors
    assert torch_loaded == "False"
