"""Every tensor of the components other than the decoder, and their prompt token counts
(torch-free).

`component_tensors(spec)` lists, per component id, the tensors of the module that
`omnic.model.components.build_components` builds: names equal the module's state_dict
keys exactly and in order (a test asserts it), so the memory plan, quantization overrides
(`match: {role: vision}`) and every target agree on them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.constants import Components, Roles
from omnic.spec.inventory import TensorInfo

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec
    from omnic.spec.modalities import Audio, Vision


def _linear(out: list, name: str, d_out: int, d_in: int, role: str, comp: str,
            layer: int | None = None, bias: bool = True) -> None:
    out.append(TensorInfo(f"{name}.weight", (d_out, d_in), role, layer, comp))
    if bias:
        out.append(TensorInfo(f"{name}.bias", (d_out,), role, layer, comp))


def _layer_norm(out: list, name: str, d: int, role: str, comp: str,
                layer: int | None = None) -> None:
    out.append(TensorInfo(f"{name}.weight", (d,), role, layer, comp))
    out.append(TensorInfo(f"{name}.bias", (d,), role, layer, comp))


def _blocks(out: list, prefix: str, n: int, d: int, hidden: int, role: str, comp: str,
            k_bias: bool = True) -> None:
    """encoders/blocks.py Block: attn_norm, attn.{q,k,v,o}, ffn_norm, ffn.{up,down}."""
    for i in range(n):
        p = f"{prefix}.{i}"
        _layer_norm(out, f"{p}.attn_norm", d, role, comp, i)
        for proj in ("q", "k", "v", "o"):
            _linear(out, f"{p}.attn.{proj}", d, d, role, comp, i, bias=k_bias or proj != "k")
        _layer_norm(out, f"{p}.ffn_norm", d, role, comp, i)
        _linear(out, f"{p}.ffn.up", hidden, d, role, comp, i)
        _linear(out, f"{p}.ffn.down", d, hidden, role, comp, i)


def _projector(out: list, kind: str, d_in: int, d_out: int, comp: str) -> None:
    """encoders/blocks.py Projector: `linear`, or `mlp` (fc1 to d_out, fc2)."""
    if kind == "linear":
        _linear(out, "projector.linear", d_out, d_in, Roles.PROJECTOR, comp)
    else:
        _linear(out, "projector.fc1", d_out, d_in, Roles.PROJECTOR, comp)
        _linear(out, "projector.fc2", d_out, d_out, Roles.PROJECTOR, comp)


def vision_tensors(v: "Vision", d_dec: int) -> list[TensorInfo]:
    comp, role, d = Components.VISION_ENCODER, Roles.VISION, v.d_model
    out: list[TensorInfo] = []
    if v.class_token:
        out.append(TensorInfo("tower.class_embed", (d,), role, None, comp))
    out.append(TensorInfo("tower.pos_embed", (v.n_positions, d), role, None, comp))
    out.append(TensorInfo("tower.patch_embed.weight", (d, v.channels, v.patch_size, v.patch_size),
                          role, None, comp))
    if v.patch_bias:
        out.append(TensorInfo("tower.patch_embed.bias", (d,), role, None, comp))
    if v.pre_norm:
        _layer_norm(out, "tower.pre_norm", d, role, comp)
    _blocks(out, "tower.layers", v.n_layers, d, v.ffn_width, role, comp)
    if v.post_norm:
        _layer_norm(out, "tower.post_norm", d, role, comp)
    kind = "mlp" if v.projector == "pixel_shuffle_mlp" else v.projector
    _projector(out, kind, v.projector_in, d_dec, comp)
    return out


def audio_tensors(a: "Audio", d_dec: int) -> list[TensorInfo]:
    comp, role, d = Components.AUDIO_ENCODER, Roles.AUDIO, a.d_model
    out = [TensorInfo("tower.pos_embed", (a.n_positions, d), role, None, comp)]
    out.append(TensorInfo("tower.conv1.weight", (d, a.n_mels, 3), role, None, comp))
    out.append(TensorInfo("tower.conv1.bias", (d,), role, None, comp))
    out.append(TensorInfo("tower.conv2.weight", (d, d, 3), role, None, comp))
    out.append(TensorInfo("tower.conv2.bias", (d,), role, None, comp))
    _blocks(out, "tower.layers", a.n_layers, d, a.ffn_width, role, comp, k_bias=False)
    _layer_norm(out, "tower.norm", d, role, comp)
    _projector(out, a.projector, d, d_dec, comp)
    return out


def component_tensors(spec: "ResolvedSpec") -> dict[str, list[TensorInfo]]:
    """{component id: its tensors in state_dict order}, for each part present in `spec.modalities`,
    in the order vision_encoder, audio_encoder, sensor_projector, action_head."""
    m, d_dec = spec.modalities, spec.model.d_model
    out: dict[str, list[TensorInfo]] = {}
    if m.vision is not None:
        out[Components.VISION_ENCODER] = vision_tensors(m.vision, d_dec)
    if m.audio is not None:
        out[Components.AUDIO_ENCODER] = audio_tensors(m.audio, d_dec)
    if m.sensors is not None:
        s, comp, t = m.sensors, Components.SENSOR_PROJECTOR, []
        if s.projector == "linear":
            _linear(t, "linear", s.n_tokens * d_dec, s.dim, Roles.SENSORS, comp)
        else:
            hidden = s.hidden or d_dec
            _linear(t, "fc1", hidden, s.dim, Roles.SENSORS, comp)
            _linear(t, "fc2", s.n_tokens * d_dec, hidden, Roles.SENSORS, comp)
        out[comp] = t
    if m.action_head is not None:
        h, comp, t = m.action_head, Components.ACTION_HEAD, []
        _linear(t, "fc1", h.hidden, d_dec, Roles.ACTION, comp)
        _linear(t, "fc2", h.horizon * h.dim, h.hidden, Roles.ACTION, comp)
        out[comp] = t
    return out


def placeholder_tokens(spec: "ResolvedSpec") -> dict[str, int]:
    """{encoder component id: decoder embeddings it yields per input} (image tokens per image,
    audio tokens per clip, sensor tokens per reading): the prompt holds that many placeholders."""
    m = spec.modalities
    out: dict[str, int] = {}
    if m.vision is not None:
        out[Components.VISION_ENCODER] = m.vision.n_tokens
    if m.audio is not None:
        out[Components.AUDIO_ENCODER] = m.audio.n_tokens
    if m.sensors is not None:
        out[Components.SENSOR_PROJECTOR] = m.sensors.n_tokens
    return out
