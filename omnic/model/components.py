"""Components other than the decoder: encoders that feed it and heads that read it.

CONTRACT (shared by the builder, every target, the golden check and `omnic run`):

    build_components(spec: ResolvedSpec, spec_dir: Path) -> dict[str, Component]

returns one `Component` per part present in `spec.modalities` (an empty dict when none), keyed by
`omnic.constants.Components` ids, in this order: vision_encoder, audio_encoder, sensor_projector,
action_head. Each module is in eval mode, float32, requires_grad off, batch fixed at 1, static
shapes, with ONE tensor input and ONE tensor output so every backend can carry it:

    component         input name       input shape (f32)       output name     output shape (f32)
    vision_encoder    pixel_values     [1, C, H, W]            image_embeds    [1, N_img, d_dec]
    audio_encoder     input_features   [1, n_mels, n_frames]   audio_embeds    [1, N_aud, d_dec]
    sensor_projector  sensor_values    [1, dim]                sensor_embeds   [1, n_tokens, d_dec]
    action_head       hidden_states    [1, d_dec]              actions         [1, horizon, dim]

(d_dec = the decoder's d_model.) The encoders include their projector: their output rows are
decoder input embeddings, placed where the prompt's placeholder tokens are.
"""

from __future__ import annotations

import logging
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING


from omnic.constants import Components

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from omnic.spec import ResolvedSpec

_log = logging.getLogger(__name__)

# The example input's generator seed (fixed: golden inputs must not depend on the weights' seed).
EXAMPLE_SEED = 1234


@dataclass(frozen=True)
class Component:
    """One built component: the module and what it is called with."""

    name: str  # an omnic.constants.Components id
    module: "torch.nn.Module"  # eval, float32, one tensor in, one tensor out
    example_input: "torch.Tensor"  # seeded, of the exact input shape (used for export and golden)
    input_name: str
    output_name: str


# component id -> (input name, output name)
IO_NAMES = {
    Components.VISION_ENCODER: ("pixel_values", "image_embeds"),
    Components.AUDIO_ENCODER: ("input_features", "audio_embeds"),
    Components.SENSOR_PROJECTOR: ("sensor_values", "sensor_embeds"),
    Components.ACTION_HEAD: ("hidden_states", "actions"),
}


def component_seed(spec: "ResolvedSpec") -> int:
    """The random seed of the components: the decoder's when it is random, else 0."""
    return spec.weights.seed if spec.weights.source == "random" else 0


def random_component_weights(component: str, inventory: list,
                             seed: int) -> dict[str, "torch.Tensor"]:
    """Seeded weights for one component: LayerNorm weights 1 and biases 0, Whisper's position
    table as its fixed sinusoids, every other tensor uniform with std 0.02 (the decoder's
    bit-reproducible generator, `omnic.model.weights.random_tensor`).

    Each tensor's stream is keyed by "<component>/<name>", which is the per-component offset:
    the vision and audio towers share tensor names but never weights.
    """
    import dataclasses

    import torch

    from omnic.model.encoders.audio import sinusoids
    from omnic.model.weights import random_tensor

    out = {}
    for t in inventory:
        if t.name.endswith("norm.weight"):
            out[t.name] = torch.ones(t.shape)
        elif t.name.endswith("norm.bias"):
            out[t.name] = torch.zeros(t.shape)
        elif component == Components.AUDIO_ENCODER and t.name == "tower.pos_embed":
            out[t.name] = sinusoids(*t.shape)
        else:
            keyed = dataclasses.replace(t, name=f"{component}/{t.name}")
            out[t.name] = random_tensor(keyed, seed, unit_offset=False)
    return out


def example_input(component: str, shape: tuple[int, ...]) -> "torch.Tensor":
    """A seeded input of the component's exact shape, in the range real inputs have (normalised
    pixels and log-mels roughly in [-1, 1] after Whisper's scaling; unit-scale sensors/hidden)."""
    import torch

    digest = hashlib.sha256(f"omnic/example/{component}".encode()).digest()
    g = torch.Generator().manual_seed(EXAMPLE_SEED + int.from_bytes(digest[:4], "little"))
    return (torch.rand(shape, generator=g) * 2.0 - 1.0).to(torch.float32)


def _module_and_shape(spec: "ResolvedSpec", name: str):
    """The component's module on the meta device (no memory, no init) and its input shape."""
    from omnic.model.encoders import audio, heads, vision

    m, d_dec = spec.modalities, spec.model.d_model
    if name == Components.VISION_ENCODER:
        v = m.vision
        c = vision.VisionConfig(
            image_size=v.image_size, patch_size=v.patch_size, channels=v.channels,
            d_model=v.d_model, n_layers=v.n_layers, n_heads=v.n_heads, ffn_hidden=v.ffn_width,
            activation=v.act, eps=v.eps, class_token=v.class_token, pre_norm=v.pre_norm,
            post_norm=v.post_norm, patch_bias=v.patch_bias, pooling=v.pooling,
            projector=v.projector, shuffle_factor=v.pixel_shuffle_factor, d_out=d_dec,
        )
        return vision.VisionEncoder(c, "meta"), (1, v.channels, v.image_size, v.image_size)
    if name == Components.AUDIO_ENCODER:
        a = m.audio
        c = audio.AudioConfig(
            n_mels=a.n_mels, n_frames=a.n_frames, d_model=a.d_model, n_layers=a.n_layers,
            n_heads=a.n_heads, ffn_hidden=a.ffn_width, eps=a.layer_norm_eps,
            downsample=a.downsample, projector=a.projector, d_out=d_dec,
        )
        return audio.AudioEncoder(c, "meta"), (1, a.n_mels, a.n_frames)
    if name == Components.SENSOR_PROJECTOR:
        s = m.sensors
        module = heads.SensorProjector(s.dim, s.n_tokens, d_dec, s.projector, s.hidden or d_dec,
                                       "meta")
        return module, (1, s.dim)
    h = m.action_head
    return heads.ActionHead(d_dec, h.hidden, h.horizon, h.dim, "meta"), (1, d_dec)


def _imported(spec: "ResolvedSpec", spec_dir: "Path", name: str) -> dict[str, "torch.Tensor"]:
    """Tower weights read from the Hugging Face directory named in the spec ({} when none)."""
    from pathlib import Path

    from omnic.importers import hf_encoders

    field = {Components.VISION_ENCODER: "vision", Components.AUDIO_ENCODER: "audio"}.get(name)
    encoder = getattr(spec.modalities, field) if field else None
    if encoder is None or encoder.weights is None:
        return {}
    path = Path(encoder.weights)
    if not path.is_absolute():
        path = Path(spec_dir) / path
    if field == "vision":
        return hf_encoders.vision_weights(path, encoder)
    return hf_encoders.audio_weights(path, encoder)


def build_components(spec: "ResolvedSpec", spec_dir: "Path") -> dict[str, Component]:
    """Build every component of `spec.modalities` (see the module docstring for the contract).

    Towers named by `modalities.<vision|audio>.weights` are loaded from their Hugging Face
    directory; everything else (projectors, sensor projector, action head, towers without a
    directory) is seeded random.

    Raises:
        WeightError: an imported checkpoint disagrees with the spec (the message names the field).
    """

    from omnic.importers.checkpoint import WeightError, check_weights
    from omnic.spec.component_inventory import component_tensors

    seed = component_seed(spec)
    out: dict[str, Component] = {}
    for name, inventory in component_tensors(spec).items():
        module, shape = _module_and_shape(spec, name)
        try:  # the module's names and shapes must be the torch-free inventory's exactly
            check_weights(dict(module.state_dict()), inventory, f"{name} module")
        except WeightError as err:
            raise AssertionError(f"builder bug: {err}") from None
        state = random_component_weights(name, inventory, seed)
        loaded = _imported(spec, spec_dir, name)
        state.update(loaded)
        module.load_state_dict(state, strict=True, assign=True)
        module.eval().requires_grad_(False)
        n = sum(t.numel() for t in state.values())
        source = (f"imported tower + seeded projector (seed {seed})" if loaded
                  else f"seeded random (seed {seed})")
        _log.info(f"build: {name} {n / 1e6:.2f}M parameters, {source}")
        inp, outp = IO_NAMES[name]
        out[name] = Component(name, module, example_input(name, shape), inp, outp)
    return out
