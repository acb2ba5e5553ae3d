"""The spec language: pydantic models, torch-free. `omnic.spec.Spec` is the schema's source."""

from omnic.spec.device import Device
from omnic.spec.modalities import ActionHead, Audio, Modalities, Sensors, Vision
from omnic.spec.model import FFN, MoE, Model, Norm, Rope, SlidingWindow
from omnic.spec.quant import Match, Override, Quantization, WeightScheme
from omnic.spec.sources import Tokenizer, Weights
from omnic.spec.spec import ResolvedSpec, Spec
from omnic.spec.targets import Golden, Targets

__all__ = [
    "ActionHead", "Audio", "Device", "FFN", "Golden", "Match", "Modalities", "Model", "MoE", "Norm",
    "Override", "Quantization", "ResolvedSpec", "Rope", "Sensors", "SlidingWindow", "Spec",
    "Targets", "Tokenizer", "Vision", "WeightScheme", "Weights",
]
