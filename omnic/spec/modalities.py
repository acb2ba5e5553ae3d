"""Encoders that feed the decoder, and an action head (shapes only; torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from omnic.spec.base import SpecModel

Projector = Literal["linear", "mlp", "pixel_shuffle_mlp"]


class Vision(SpecModel):
    kind: Literal["vit", "siglip", "clip"] = Field("vit", description="Encoder family.")
    image_size: PositiveInt = Field(description="Square input resolution in pixels.")
    patch_size: PositiveInt = Field(description="Square patch size in pixels.")
    channels: PositiveInt = Field(3, description="Input channels.")
    d_model: PositiveInt = Field(description="Encoder width.")
    n_layers: PositiveInt = Field(description="Encoder blocks.")
    n_heads: PositiveInt = Field(description="Encoder attention heads.")
    ffn_hidden: PositiveInt | None = Field(None, description="Encoder MLP width; null = 4*d_model.")
    pooling: Literal["none", "mean"] = Field("none", description="Pool patch tokens into one.")
    projector: Projector = Field("mlp", description="Projection into the decoder embedding space.")
    pixel_shuffle_factor: PositiveInt = Field(2, description="Pixel-shuffle ratio (pixel_shuffle_mlp).")
    weights: str | None = Field(None, description="Hugging Face directory of the vision tower, or null.")


class Audio(SpecModel):
    kind: Literal["whisper"] = Field("whisper", description="Encoder family.")
    n_mels: PositiveInt = Field(80, description="Log-mel bins.")
    n_frames: PositiveInt = Field(3000, description="Input frames (10 ms hop; 3000 = 30 s).")
    d_model: PositiveInt = Field(description="Encoder width.")
    n_layers: PositiveInt = Field(description="Encoder blocks.")
    n_heads: PositiveInt = Field(description="Encoder attention heads.")
    ffn_hidden: PositiveInt | None = Field(None, description="Encoder MLP width; null = 4*d_model.")
    projector: Projector = Field("mlp", description="Projection into the decoder embedding space.")
    weights: str | None = Field(None, description="Hugging Face Whisper directory, or null.")


class Sensors(SpecModel):
    dim: PositiveInt = Field(description="Width of one sensor reading vector.")
    n_tokens: PositiveInt = Field(1, description="Decoder tokens each reading becomes.")
    projector: Literal["linear", "mlp"] = Field("mlp", description="Projection into the decoder.")


class ActionHead(SpecModel):
    dim: PositiveInt = Field(description="Width of one continuous action.")
    horizon: PositiveInt = Field(1, description="Actions predicted per step.")
    hidden: PositiveInt = Field(256, description="MLP inner width.")


class Modalities(SpecModel):
    vision: Vision | None = Field(None, description="Image encoder + projector.")
    audio: Audio | None = Field(None, description="Audio encoder + projector.")
    sensors: Sensors | None = Field(None, description="Continuous sensor vectors + projector.")
    action_head: ActionHead | None = Field(None, description="Continuous action regression head.")
