"""The spec language: pydantic models, torch-free. `omnic.spec.Spec` is the schema's source."""

from omnic.spec.device import Device
from omnic.spec.modalities import ActionHead, Audio, Modalities, Sensors, Vision
from omnic.spec.layers import Layer, LayerRope
from omnic.spec.model import FFN, MoE, Model, Norm, SlidingWindow
from omnic.spec.rope import Rope, RopeBase
from omnic.spec.quant import Match, Override, Quantization, WeightScheme
from omnic.spec.sources import Tokenizer, Weights
from omnic.spec.spec import ResolvedSpec, Spec
from omnic.spec.targets import Golden, Targets

__all__ = [
    "ActionHead", "Audio", "Device", "FFN", "Golden", "Layer", "LayerRope", "Match", "Modalities",
    "Model", "MoE", "Norm", "Override", "Quantization", "ResolvedSpec", "Rope", "RopeBase",
    "Sensors", "SlidingWindow", "Spec",
    "Targets", "Tokenizer", "Vision", "WeightScheme", "Weights",
]
