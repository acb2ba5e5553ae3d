"""Audio encoder: a Whisper encoder over log-mel features, optional frame pooling, a projector.

    input_features [1, n_mels, n_frames] -> conv1d k3 p1 -> GELU -> conv1d k3 s2 p1 -> GELU
    -> + sinusoidal positions -> pre-LN blocks -> LayerNorm -> [avg-pool by downsample]
    -> projector -> audio_embeds [1, n_frames/2/downsample, d_dec]

The log-mel front end is not part of the component (see omnic/runtime/media.py).
"""

# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/whisper/modeling_whisper.py
#      (WhisperEncoder)
# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen2_audio/modeling_qwen2_audio.py
#      (avg_pooler)

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnic.model.encoders.blocks import Block, Projector


@dataclass(frozen=True)
class AudioConfig:
    """Every number the audio encoder is built from."""

    n_mels: int
    n_frames: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    eps: float
    downsample: int
    projector: str  # linear | mlp
    d_out: int  # the decoder's d_model

    @property
    def n_positions(self) -> int:
        return (self.n_frames + 1) // 2


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table [length, channels]: sines then cosines."""
    # ref: https://github.com/openai/whisper/blob/main/whisper/model.py (sinusoids)
    if channels % 2 or channels < 4:
        raise ValueError(f"sinusoidal positions need an even width >= 4, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32).view(-1, 1) * inv.view(1, -1)
    return torch.cat([t.sin(), t.cos()], dim=1)


class WhisperTower(nn.Module):
    """Returns [1, n_frames/2, d_model], the point where it equals transformers'
    `WhisperEncoder(...).last_hidden_state`."""

    def __init__(self, c: AudioConfig, device=None) -> None:
        super().__init__()
        d = c.d_model
        self.conv1 = nn.Conv1d(c.n_mels, d, kernel_size=3, padding=1, device=device)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1, device=device)
        # A parameter, not a computed buffer: Whisper checkpoints store it and it is loaded as is.
        self.pos_embed = nn.Parameter(torch.zeros(c.n_positions, d, device=device))
        self.layers = nn.ModuleList(
            Block(d, c.n_heads, c.ffn_hidden, "gelu", c.eps, k_bias=False, device=device)
            for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(d, eps=c.eps, device=device)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class AudioEncoder(nn.Module):
    """`audio_encoder` component: input_features [1, n_mels, n_frames] -> audio_embeds
    [1, N_aud, d_dec]."""

    def __init__(self, c: AudioConfig, device=None) -> None:
        super().__init__()
        if c.n_positions % c.downsample:
            raise ValueError(f"downsample {c.downsample} does not divide the {c.n_positions} "
                             "encoder frames")
        self.tower = WhisperTower(c, device)
        self.projector = Projector(c.projector, c.d_model, c.d_out, device)
        self.config = c

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        x = self.tower(input_features)
        k = self.config.downsample
        if k > 1:  # mean of each k consecutive frames (AvgPool1d(k, stride=k)), as a reshape
            b, t, d = x.shape
            x = x.reshape(b, t // k, k, d).mean(dim=2)
        return self.projector(x)
