"""Vision encoder: a ViT / SigLIP / CLIP tower and a projector into the decoder's embeddings.

    pixel_values [1, C, H, W] -> patches (conv, stride = patch) -> [+ class token] -> + positions
    -> [pre-norm] -> blocks -> [post-norm] -> [drop class token] -> [mean pool | pixel shuffle]
    -> projector -> image_embeds [1, N_img, d_dec]
"""

# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/modeling_siglip.py
# ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omnic.model.encoders.blocks import Block, Projector


@dataclass(frozen=True)
class VisionConfig:
    """Every number the vision encoder is built from."""

    image_size: int
    patch_size: int
    channels: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    activation: str  # gelu | gelu_tanh | quick_gelu
    eps: float
    class_token: bool  # CLIP
    pre_norm: bool  # CLIP's pre_layrnorm
    post_norm: bool  # SigLIP's post_layernorm
    patch_bias: bool  # CLIP's patch embedding has none
    pooling: str  # none | mean
    projector: str  # linear | mlp | pixel_shuffle_mlp
    shuffle_factor: int
    d_out: int  # the decoder's d_model

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class VisionTower(nn.Module):
    """The transformer over patches; returns every token ([1, grid^2 (+1 class), d_model]), the
    point where it equals transformers' `last_hidden_state`."""

    def __init__(self, c: VisionConfig, device=None) -> None:
        super().__init__()
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not divisible by "
                             f"patch_size {c.patch_size}")
        d = c.d_model
        self.patch_embed = nn.Conv2d(c.channels, d, c.patch_size, stride=c.patch_size,
                                     bias=c.patch_bias, device=device)
        if c.class_token:
            self.class_embed = nn.Parameter(torch.zeros(d, device=device))
        self.pos_embed = nn.Parameter(torch.zeros(c.grid**2 + int(c.class_token), d, device=device))
        if c.pre_norm:
            self.pre_norm = nn.LayerNorm(d, eps=c.eps, device=device)
        self.layers = nn.ModuleList(
            Block(d, c.n_heads, c.ffn_hidden, c.activation, c.eps, device=device)
            for _ in range(c.n_layers)
        )
        if c.post_norm:
            self.post_norm = nn.LayerNorm(d, eps=c.eps, device=device)
        self.config = c

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [1, grid^2, d], row-major
        if c.class_token:
            x = torch.cat([self.class_embed.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self.pos_embed
        if c.pre_norm:
            x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        if c.post_norm:
            x = self.post_norm(x)
        return x


def pixel_shuffle(x: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """[b, grid^2, d] -> [b, grid^2/r^2, d*r^2]: each r x r block of patches becomes one token,
    in Idefics3's order (so its checkpoints' projector weights line up)."""
    # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/idefics3/modeling_idefics3.py
    #      (Idefics3Connector.pixel_shuffle)
    b, n, d = x.shape
    x = x.reshape(b, grid, grid // r, d * r)
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(b, grid // r, grid // r, d * r * r)
    x = x.permute(0, 2, 1, 3)
    return x.reshape(b, n // (r * r), d * r * r)


class VisionEncoder(nn.Module):
    """`vision_encoder` component: pixel_values [1, C, H, W] -> image_embeds [1, N_img, d_dec]."""

    def __init__(self, c: VisionConfig, device=None) -> None:
        super().__init__()
        shuffle = c.projector == "pixel_shuffle_mlp"
        if shuffle and (c.grid % c.shuffle_factor or c.pooling != "none"):
            raise ValueError(f"pixel shuffle by {c.shuffle_factor} needs an unpooled patch grid "
                             f"divisible by it (grid {c.grid}, pooling {c.pooling})")
        self.tower = VisionTower(c, device)
        d_in = c.d_model * c.shuffle_factor**2 if shuffle else c.d_model
        self.projector = Projector("mlp" if shuffle else c.projector, d_in, c.d_out, device)
        self.config = c

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.tower(pixel_values)
        if c.class_token:
            x = x[:, 1:]  # LLaVA's "default" feature selection drops the class token
        if c.pooling == "mean":
            x = x.mean(dim=1, keepdim=True)
        elif c.projector == "pixel_shuffle_mlp":
            x = pixel_shuffle(x, c.grid, c.shuffle_factor)
        return self.projector(x)
