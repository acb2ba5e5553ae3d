"""Components other than the decoder: contract shapes, numerics against independent references,
seeded determinism, the torch-free inventory, torch.export, and the spec's validation rules."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from omnic.model.components import Component, build_components
from omnic.constants import Components, Roles
from omnic.spec.component_inventory import component_tensors, placeholder_tokens

from tiny_specs import make_resolved_spec

# (not `from conftest import ...`: with tests/importers collected too, `conftest` is ambiguous)
DECODER = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
           "head_dim": 16, "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64,
           "tie_embeddings": True}
D_DEC = DECODER["d_model"]


def resolved_spec(**top):
    return make_resolved_spec(DECODER, **top)

VISION = {"kind": "siglip", "image_size": 32, "patch_size": 8, "d_model": 32, "n_layers": 2,
          "n_heads": 2}
AUDIO = {"n_mels": 16, "n_frames": 40, "d_model": 32, "n_layers": 2, "n_heads": 2}
SENSORS = {"dim": 7, "n_tokens": 3}
ACTION = {"dim": 6, "horizon": 4, "hidden": 48}
ALL = {"vision": VISION, "audio": AUDIO, "sensors": SENSORS, "action_head": ACTION}


def build(modalities: dict, **top) -> dict[str, Component]:
    return build_components(resolved_spec(modalities=modalities, **top), Path("."))


@pytest.fixture(scope="module")
def components() -> dict[str, Component]:
    return build(ALL)


def test_contract_order_names_and_shapes(components):
    assert list(components) == [Components.VISION_ENCODER, Components.AUDIO_ENCODER,
                                Components.SENSOR_PROJECTOR, Components.ACTION_HEAD]
    want = {  # (input name, input shape, output name, output shape), from the contract table
        Components.VISION_ENCODER: ("pixel_values", (1, 3, 32, 32), "image_embeds", (1, 16, D_DEC)),
        Components.AUDIO_ENCODER: ("input_features", (1, 16, 40), "audio_embeds", (1, 20, D_DEC)),
        Components.SENSOR_PROJECTOR: ("sensor_values", (1, 7), "sensor_embeds", (1, 3, D_DEC)),
        Components.ACTION_HEAD: ("hidden_states", (1, D_DEC), "actions", (1, 4, 6)),
    }
    for name, c in components.items():
        inp, in_shape, outp, out_shape = want[name]
        assert c.name == name and (c.input_name, c.output_name) == (inp, outp)
        assert tuple(c.example_input.shape) == in_shape and c.example_input.dtype == torch.float32
        assert not c.module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 for p in c.module.parameters())
        y = c.module(c.example_input)
        assert tuple(y.shape) == out_shape and y.dtype == torch.float32
        assert torch.isfinite(y).all() and 0 < y.abs().max() < 10
    spec = resolved_spec(modalities=ALL)
    assert placeholder_tokens(spec) == {Components.VISION_ENCODER: 16, Components.AUDIO_ENCODER: 20,
                                        Components.SENSOR_PROJECTOR: 3}


def test_no_modalities_builds_nothing():
    assert build({}) == {}


@pytest.mark.parametrize("vision, tokens", [
    ({"kind": "clip"}, 16),  # class token dropped before the projector
    ({"kind": "vit", "projector": "linear"}, 16),
    ({"pooling": "mean"}, 1),
    ({"projector": "pixel_shuffle_mlp", "pixel_shuffle_factor": 2}, 4),
    ({"projector": "pixel_shuffle_mlp", "pixel_shuffle_factor": 4}, 1),
])
def test_vision_token_counts(vision, tokens):
    modalities = {"vision": {**VISION, **vision}}
    c = build(modalities)[Components.VISION_ENCODER]
    assert tuple(c.module(c.example_input).shape) == (1, tokens, D_DEC)
    assert (placeholder_tokens(resolved_spec(modalities=modalities))[Components.VISION_ENCODER]
            == tokens)


@pytest.mark.parametrize("modalities", [
    ALL,
    {"vision": {**VISION, "kind": "clip", "projector": "linear"},
     "audio": {**AUDIO, "projector": "linear"},
     "sensors": {**SENSORS, "projector": "linear"}},
    {"vision": {**VISION, "projector": "pixel_shuffle_mlp"}, "sensors": {**SENSORS, "hidden": 16}},
])
def test_state_dict_is_the_torch_free_inventory(modalities):
    spec = resolved_spec(modalities=modalities)
    inventory = component_tensors(spec)
    built = build_components(spec, Path("."))
    assert list(inventory) == list(built)
    roles = {Components.VISION_ENCODER: {Roles.VISION, Roles.PROJECTOR},
             Components.AUDIO_ENCODER: {Roles.AUDIO, Roles.PROJECTOR},
             Components.SENSOR_PROJECTOR: {Roles.SENSORS}, Components.ACTION_HEAD: {Roles.ACTION}}
    for name, tensors in inventory.items():
        state = built[name].module.state_dict()
        assert [t.name for t in tensors] == list(state)
        assert [t.shape for t in tensors] == [tuple(v.shape) for v in state.values()]
        assert all(t.component == name for t in tensors)
        assert {t.role for t in tensors} == roles[name]
        assert all(t.role == Roles.PROJECTOR for t in tensors if t.name.startswith("projector."))


def test_random_weights_are_seeded_and_deterministic(components):
    again = build(ALL)
    other = build(ALL, weights={"source": "random", "seed": 7})
    for name, c in components.items():
        a, b, o = (c.module.state_dict(), again[name].module.state_dict(),
                   other[name].module.state_dict())
        for key in a:
            assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
        assert torch.equal(c.example_input, again[name].example_input)
        assert any(not torch.equal(a[k], o[k]) for k in a), name  # the seed matters
        matrices = [v for k, v in a.items() if v.dim() >= 2 and k != "tower.pos_embed"]
        for m in matrices:  # std 0.02 (uniform), sane range
            assert 0.015 < float(m.std()) < 0.025 and float(m.abs().max()) < 0.04
    va = components[Components.VISION_ENCODER].module.state_dict()
    aa = components[Components.AUDIO_ENCODER].module.state_dict()
    # same tensor name in two components: different streams
    assert not torch.equal(va["tower.layers.0.attn.q.weight"], aa["tower.layers.0.attn.q.weight"])
    assert torch.equal(va["tower.layers.0.attn_norm.weight"], torch.ones(32))
    assert torch.equal(va["tower.layers.0.attn_norm.bias"], torch.zeros(32))


def test_audio_positions_are_whisper_sinusoids(components):
    from transformers.models.whisper.modeling_whisper import sinusoids

    pos = components[Components.AUDIO_ENCODER].module.state_dict()["tower.pos_embed"]
    torch.testing.assert_close(pos, sinusoids(20, 32), rtol=0, atol=1e-6)


def _mlp(state, prefix, x):
    """Linear, GELU, Linear from a state dict (an independent functional reference)."""
    h = F.gelu(F.linear(x, state[f"{prefix}fc1.weight"], state[f"{prefix}fc1.bias"]))
    return F.linear(h, state[f"{prefix}fc2.weight"], state[f"{prefix}fc2.bias"])


def test_heads_match_functional_reference(components):
    s = components[Components.SENSOR_PROJECTOR]
    x = s.example_input
    want = _mlp(s.module.state_dict(), "", x).reshape(1, 3, D_DEC)
    torch.testing.assert_close(s.module(x), want, rtol=0, atol=1e-6)
    # token j of the reading is rows [j*d_dec, (j+1)*d_dec) of the last layer
    torch.testing.assert_close(s.module(x)[0, 1], want.reshape(-1)[D_DEC:2 * D_DEC])
    a = components[Components.ACTION_HEAD]
    x = a.example_input
    torch.testing.assert_close(a.module(x), _mlp(a.module.state_dict(), "", x).reshape(1, 4, 6),
                               rtol=0, atol=1e-6)


def test_pixel_shuffle_projector_matches_idefics3():
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    c = build({"vision": {**VISION, "projector": "pixel_shuffle_mlp"}})[Components.VISION_ENCODER]
    m, x = c.module, c.example_input
    tokens = m.tower(x)  # [1, 16, 32]
    shuffled = Idefics3Connector.pixel_shuffle(None, tokens, 2)  # [1, 4, 128]
    torch.testing.assert_close(m(x), _mlp(m.state_dict(), "projector.", shuffled),
                               rtol=0, atol=1e-6)
    # token 0 holds the top-left 2x2 patches of the 4x4 grid
    assert torch.equal(shuffled[0, 0].reshape(4, 32)[0], tokens[0, 0])


def test_clip_drops_class_token_and_mean_pooling():
    c = build({"vision": {**VISION, "kind": "clip", "pooling": "mean"}})[Components.VISION_ENCODER]
    m, x = c.module, c.example_input
    tokens = m.tower(x)
    assert tokens.shape == (1, 17, 32)
    torch.testing.assert_close(m(x), _mlp(m.state_dict(), "projector.",
                                          tokens[:, 1:].mean(1, keepdim=True)),
                               rtol=0, atol=1e-6)


def test_audio_downsample_is_an_average_pool():
    c = build({"audio": {**AUDIO, "downsample": 4}})[Components.AUDIO_ENCODER]
    m, x = c.module, c.example_input
    pooled = F.avg_pool1d(m.tower(x).transpose(1, 2), 4, 4).transpose(1, 2)  # [1, 5, 32]
    torch.testing.assert_close(m(x), _mlp(m.state_dict(), "projector.", pooled), rtol=0, atol=1e-6)


def test_every_component_exports(components):
    for name, c in components.items():
        program = torch.export.export(c.module, (c.example_input,))
        x = c.example_input + 0.25  # not the traced values: shapes only were captured
        torch.testing.assert_close(program.module()(x), c.module(x), rtol=1e-5, atol=1e-6, msg=name)


# --- validation -------------------------------------------------------------------------------
SPEC = {
    "omnic": 1, "name": "mm", "device": "desktop_cpu",
    "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
              "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64,
              "tie_embeddings": True},
    "targets": {},
    "golden": {"cases": 1, "prompt_tokens": 8, "decode_steps": 4},
}


def validate(tmp_path, modalities):
    from omnic.compiler.validate import validate_file

    data = copy.deepcopy(SPEC)
    data["modalities"] = modalities
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = validate_file(path)
    return {(d.field, d.message) for d in result.errors}


def test_valid_modalities_spec(tmp_path):
    assert validate(tmp_path, ALL) == set()


@pytest.mark.parametrize("modalities, field, words", [
    ({"vision": {**VISION, "image_size": 30}}, "modalities.vision.image_size",
     "not divisible by patch_size 8"),
    ({"vision": {**VISION, "n_heads": 3}}, "modalities.vision.n_heads",
     "does not divide d_model 32"),
    ({"vision": {**VISION, "projector": "pixel_shuffle_mlp", "pixel_shuffle_factor": 3}},
     "modalities.vision.pixel_shuffle_factor", "4x4 patch grid"),
    ({"vision": {**VISION, "projector": "pixel_shuffle_mlp", "pooling": "mean"}},
     "modalities.vision.pooling", "pooling: none"),
    ({"vision": {**VISION, "image_mean": [0.5, 0.5]}}, "modalities.vision.image_mean",
     "2 values for 3 channels"),
    ({"audio": {**AUDIO, "downsample": 3}}, "modalities.audio.downsample",
     "does not divide the 20"),
    ({"audio": {**AUDIO, "n_frames": 41}}, "modalities.audio.n_frames", "must be even"),
    ({"audio": {**AUDIO, "n_heads": 5}}, "modalities.audio.n_heads", "does not divide d_model 32"),
    ({"vision": {**VISION, "activation": "relu"}}, "modalities.vision.activation",
     "must be one of"),
])
def test_invalid_modalities_are_reported(tmp_path, modalities, field, words):
    errors = validate(tmp_path, modalities)
    assert any(f == field and words in msg for f, msg in errors), errors
