"""The value that flows from the build stage through passes to every target."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec


class NoQuantPlan(RuntimeError):
    """A target asked for the quant plan of a program that `quant::plan` has not run on."""


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
    # every decoder tensor's storage scheme, decided once by the `quant::plan` pass for all
    # targets; None until that pass has run
    quant_plan: "dict[str, TensorScheme] | None" = None
    # calibration's importance of each calibrated matrix's input columns (the mean of x^2 over
    # the calibration tokens, llama.cpp's imatrix), for targets whose own quantizer weighs its
    # rounding with it (GGUF K-quants); None without calibration
    importance: "dict[str, Any] | None" = None

    def evolve(self, **changes: Any) -> "Program":
        return replace(self, **changes)

    def schemes(self) -> "dict[str, TensorScheme]":
        """The quant plan (canonical tensor name -> TensorScheme); every target lowers this.

        Raises:
            NoQuantPlan: the `quant::plan` pass has not run on this program.
        """
        if self.quant_plan is None:
            raise NoQuantPlan("the program has no quant plan: run the quant::plan pass before "
                              "lowering (omnic.passes.DEFAULT does)")
        return dict(self.quant_plan)
