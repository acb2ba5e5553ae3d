"""The value that flows from the build stage through passes to every target."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from omnic.spec import ResolvedSpec


@dataclass(frozen=True)
class Program:
    """A built model and what passes have decided about it.

    Targets read a Program and never mutate it; passes return a new one (`evolve`).
    """

    spec: "ResolvedSpec"
    spec_dir: Path  # relative paths in the spec (weights, tokenizer) are resolved against this
    decoder: "torch.nn.Module"  # omnic.model.Decoder with fp32 reference weights
    # encoders and heads: omnic.model.components.Component by component id
    components: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)  # pass results, e.g. "quant_plan"

    def evolve(self, **changes: Any) -> "Program":
        return replace(self, **changes)
