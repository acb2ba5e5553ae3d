"""Encoders that feed the decoder, and an action head (shapes only; torch-free).

The properties below derive everything the builder, the tensor inventory and the memory plan need
from the written fields (what a `kind` implies, token counts), so those three agree by
construction. Defaults that depend on `kind` are those of the transformers configuration classes:
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/configuration_siglip.py
ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/configuration_clip.py
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from omnic.spec.base import SpecModel

Projector = Literal["linear", "mlp", "pixel_shuffle_mlp"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]

# kind -> (activation, layer_norm_eps, image_mean, image_std)
VISION_DEFAULTS: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...]]] = {
    # timm/DeiT ViT: exact GELU, LayerNorm eps 1e-6, ImageNet statistics
    "vit": ("gelu", 1e-6, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # SiglipVisionConfig: gelu_pytorch_tanh, 1e-6; SiglipImageProcessor: mean = std = 0.5
    "siglip": ("gelu_tanh", 1e-6, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # CLIPVisionConfig: quick_gelu, 1e-5; OPENAI_CLIP_MEAN / OPENAI_CLIP_STD
    "clip": ("quick_gelu", 1e-5, (0.48145466, 0.4578275, 0.40821073),
             (0.26862954, 0.26130258, 0.27577711)),
}


class Vision(SpecModel):
    kind: Literal["vit", "siglip", "clip"] = Field(
        "vit",
        description="Encoder family. vit and siglip: no class token, a final LayerNorm (SigLIP's "
        "post_layernorm). clip: a class token and a LayerNorm before the blocks (CLIP's "
        "pre_layrnorm), no final norm, no patch-embedding bias; the class token is dropped "
        "before the projector (LLaVA's 'default' feature selection).",
    )
    image_size: PositiveInt = Field(description="Square input resolution in pixels.")
    patch_size: PositiveInt = Field(description="Square patch size in pixels.")
    channels: PositiveInt = Field(3, description="Input channels.")
    d_model: PositiveInt = Field(description="Encoder width.")
    n_layers: PositiveInt = Field(description="Encoder blocks.")
    n_heads: PositiveInt = Field(description="Encoder attention heads.")
    ffn_hidden: PositiveInt | None = Field(None, description="Encoder MLP width; null = 4*d_model.")
    activation: Activation | None = Field(
        None,
        description="MLP activation: gelu (exact), gelu_tanh (tanh approximation), quick_gelu "
        "(x*sigmoid(1.702x)); null = by kind (vit gelu, siglip gelu_tanh, clip quick_gelu).",
    )
    layer_norm_eps: PositiveFloat | None = Field(
        None, description="LayerNorm epsilon; null = by kind (vit 1e-6, siglip 1e-6, clip 1e-5)."
    )
    image_mean: tuple[float, ...] | None = Field(
        None,
        description="Per-channel mean subtracted from [0,1] pixels before the encoder (one per "
        "channel); null = by kind (vit ImageNet, siglip 0.5, clip OpenAI CLIP).",
    )
    image_std: tuple[float, ...] | None = Field(
        None, description="Per-channel standard deviation dividing the pixels; null = by kind."
    )
    pooling: Literal["none", "mean"] = Field("none", description="Pool patch tokens into one.")
    projector: Projector = Field(
        "mlp",
        description="Projection into the decoder embedding space: linear; mlp (Linear, GELU, "
        "Linear as LLaVA-1.5); pixel_shuffle_mlp (SmolVLM/Idefics3: r x r neighbouring patches "
        "concatenated into one token of width d_model*r^2, then the mlp).",
    )
    pixel_shuffle_factor: PositiveInt = Field(
        2, description="Pixel-shuffle ratio r (pixel_shuffle_mlp)."
    )
    weights: str | None = Field(
        None, description="Hugging Face directory of the vision tower (relative to the spec "
        "file and inside its folder, or absolute), or null."
    )

    @property
    def act(self) -> str:
        return self.activation or VISION_DEFAULTS[self.kind][0]

    @property
    def eps(self) -> float:
        return (self.layer_norm_eps if self.layer_norm_eps is not None
                else VISION_DEFAULTS[self.kind][1])

    @property
    def mean(self) -> tuple[float, ...]:
        return self.image_mean if self.image_mean is not None else VISION_DEFAULTS[self.kind][2]

    @property
    def std(self) -> tuple[float, ...]:
        return self.image_std if self.image_std is not None else VISION_DEFAULTS[self.kind][3]

    @property
    def class_token(self) -> bool:
        return self.kind == "clip"

    @property
    def pre_norm(self) -> bool:
        return self.kind == "clip"

    @property
    def post_norm(self) -> bool:
        return self.kind != "clip"

    @property
    def patch_bias(self) -> bool:
        return self.kind != "clip"

    @property
    def ffn_width(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def n_positions(self) -> int:
        """Tokens inside the tower: patches, plus the class token."""
        return self.grid**2 + int(self.class_token)

    @property
    def n_tokens(self) -> int:
        """Decoder embeddings one image becomes (image placeholder tokens in the prompt)."""
        if self.pooling == "mean":
            return 1
        if self.projector == "pixel_shuffle_mlp":
            return self.grid**2 // self.pixel_shuffle_factor**2
        return self.grid**2

    @property
    def projector_in(self) -> int:
        """Width of one token entering the projector."""
        if self.projector == "pixel_shuffle_mlp":
            return self.d_model * self.pixel_shuffle_factor**2
        return self.d_model


class Audio(SpecModel):
    kind: Literal["whisper"] = Field("whisper", description="Encoder family.")
    n_mels: PositiveInt = Field(80, description="Log-mel bins.")
    n_frames: PositiveInt = Field(3000, description="Input frames (10 ms hop; 3000 = 30 s).")
    d_model: PositiveInt = Field(description="Encoder width.")
    n_layers: PositiveInt = Field(description="Encoder blocks.")
    n_heads: PositiveInt = Field(description="Encoder attention heads.")
    ffn_hidden: PositiveInt | None = Field(None, description="Encoder MLP width; null = 4*d_model.")
    layer_norm_eps: PositiveFloat = Field(1e-5, description="LayerNorm epsilon (Whisper: 1e-5).")
    downsample: PositiveInt = Field(
        1,
        description="Average-pool the encoder's output frames by this factor before the projector "
        "(Qwen2-Audio pools by 2); 1 = no pooling. Must divide n_frames/2.",
    )
    projector: Literal["linear", "mlp"] = Field(
        "mlp", description="Projection into the decoder embedding space "
        "(mlp: Linear, GELU, Linear)."
    )
    weights: str | None = Field(
        None, description="Hugging Face Whisper directory (relative to the spec file and inside "
        "its folder, or absolute), or null."
    )

    @property
    def ffn_width(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    @property
    def n_positions(self) -> int:
        """Frames after the stride-2 convolution (Whisper's max_source_positions)."""
        return (self.n_frames + 1) // 2

    @property
    def n_tokens(self) -> int:
        """Decoder embeddings one clip becomes (audio placeholder tokens in the prompt)."""
        return self.n_positions // self.downsample


class Sensors(SpecModel):
    dim: PositiveInt = Field(description="Width of one sensor reading vector.")
    n_tokens: PositiveInt = Field(1, description="Decoder tokens each reading becomes.")
    projector: Literal["linear", "mlp"] = Field("mlp", description="Projection into the decoder.")
    hidden: PositiveInt | None = Field(
        None, description="MLP inner width; null = the decoder's d_model."
    )


class ActionHead(SpecModel):
    dim: PositiveInt = Field(description="Width of one continuous action.")
    horizon: PositiveInt = Field(1, description="Actions predicted per step.")
    hidden: PositiveInt = Field(256, description="MLP inner width.")


class Modalities(SpecModel):
    vision: Vision | None = Field(None, description="Image encoder + projector.")
    audio: Audio | None = Field(None, description="Audio encoder + projector.")
    sensors: Sensors | None = Field(None, description="Continuous sensor vectors + projector.")
    action_head: ActionHead | None = Field(None, description="Continuous action regression head.")
