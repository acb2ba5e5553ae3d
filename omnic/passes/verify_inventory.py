"""`common::verify_inventory`: the decoder's state dict is exactly the spec's tensor inventory.

Every later pass and every target addresses tensors by their canonical names
(omnic/spec/inventory.py); a missing, extra or mis-shaped tensor found here is a builder bug
reported by name, instead of a KeyError deep inside a lowering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.passes.base import PassResult, PostconditionError, register_pass

if TYPE_CHECKING:
    from omnic.passes.program import Program


def inventory_mismatches(program: "Program") -> list[str]:
    """Human-readable differences between the decoder state dict and the inventory."""
    from omnic.spec.inventory import decoder_tensors

    expected = {t.name: tuple(t.shape) for t in decoder_tensors(program.spec.model)}
    actual = {k: tuple(v.shape) for k, v in program.decoder.state_dict().items()}
    problems = [f"missing {name} {list(shape)}" for name, shape in expected.items()
                if name not in actual]
    problems += [f"unexpected {name} {list(shape)}" for name, shape in actual.items()
                 if name not in expected]
    problems += [
        f"{name}: shape {list(actual[name])}, inventory says {list(shape)}"
        for name, shape in expected.items()
        if name in actual and actual[name] != shape
    ]
    return problems


@register_pass("common::verify_inventory")
class VerifyInventory:
    """Check, change nothing."""

    def requires(self, program: "Program") -> None:
        pass

    def call(self, program: "Program") -> PassResult:
        problems = inventory_mismatches(program)
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more"
                                               if len(problems) > 8 else "")
            raise PostconditionError(f"decoder state dict does not match the inventory: {shown}")
        return PassResult(program, changed=False)

    def ensures(self, program: "Program") -> None:
        pass
