"""Build the PyTorch decoder from a resolved spec: `build_model(spec, spec_dir) -> Decoder`.

The decoder is constructed on the meta device (no memory) and its weights are then assigned
tensor by tensor from the spec's weight source, so building never holds two copies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from omnic.model.config import DecoderConfig, decoder_config
from omnic.model.modules.decoder import Decoder
from omnic.importers.checkpoint import WeightError, check_weights

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

__all__ = ["Decoder", "DecoderConfig", "WeightError", "build_model", "decoder_config",
           "load_weights"]

_log = logging.getLogger(__name__)


def load_weights(spec: "ResolvedSpec", spec_dir: Path) -> dict[str, torch.Tensor]:
    """The spec's weights as {canonical name: float32 tensor}, checked against the inventory."""
    from omnic.model import weights as W
    from omnic.spec.inventory import decoder_tensors

    inventory = decoder_tensors(spec.model)
    src = spec.weights
    if src.source == "random":
        return W.random_weights(inventory, src.seed, spec.model.norm.unit_offset)
    path = Path(src.path)
    if not path.is_absolute():
        path = Path(spec_dir) / path
    if src.source == "safetensors":
        from omnic.importers.checkpoint import safetensors_weights

        return safetensors_weights(path, inventory)
    if src.source == "huggingface":
        from omnic.importers.hf_weights import hf_weights

        return hf_weights(path, inventory)
    if src.source == "gguf":
        from omnic.importers.gguf import gguf_weights

        return gguf_weights(path, inventory, spec.model)
    raise WeightError(f"unknown weight source {src.source!r}")


def build_model(spec: "ResolvedSpec", spec_dir: Path) -> Decoder:
    """The decoder of `spec` in eval mode, float32, weights loaded per `spec.weights`.

    Raises:
        WeightError: the weights' names or shapes differ from the spec's tensor inventory.
    """
    from omnic.spec.inventory import decoder_tensors

    config = decoder_config(spec.model)
    # Parameters on the meta device (explicit device= rather than a `with torch.device("meta")`
    # block, whose function-mode hook costs seconds of lazy imports).
    decoder = Decoder(config, device="meta")
    inventory = decoder_tensors(spec.model)
    try:  # the modules' parameter names and shapes must be the inventory's exactly
        check_weights(dict(decoder.state_dict()), inventory, "decoder modules")
    except WeightError as err:
        raise AssertionError(f"builder bug: {err}") from None
    state = load_weights(spec, spec_dir)
    decoder.load_state_dict(state, strict=True, assign=True)
    decoder.eval().requires_grad_(False)
    _log.info(
        f"build: {config.n_layers} layers, d_model {config.d_model}, "
        f"{sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters from {spec.weights.source}"
    )
    return decoder
