"""Presets (devices, models, quantization) and resolving a spec against them; torch-free."""

from omnic.presets.resolve import resolve
from omnic.presets.store import UnknownPreset, names, path_of

__all__ = ["UnknownPreset", "names", "path_of", "resolve"]
