"""`quant::plan`: decide every decoder tensor's storage scheme, once, for all targets.

The decision comes from `omnic.quant.select.tensor_schemes` (default scheme, ordered overrides,
first match wins); this pass records it in `program.quant_plan` so that every target lowers
the same decision and the golden check can explain it. It does not touch weights:
each target quantizes in its own native format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnic.passes.base import (
    PassResult,
    PostconditionError,
    PreconditionError,
    register_pass,
)

if TYPE_CHECKING:
    from omnic.passes.program import Program

@register_pass("quant::plan")
class QuantPlan:
    def requires(self, program: "Program") -> None:
        if program.quant_plan is not None:
            raise PreconditionError("the program already has a quant_plan; run quant::plan once")

    def call(self, program: "Program") -> PassResult:
        from omnic.quant.select import tensor_schemes

        plan = dict(tensor_schemes(program.spec))
        return PassResult(program.evolve(quant_plan=plan), changed=True)

    def ensures(self, program: "Program") -> None:
        from omnic.spec.inventory import decoder_tensors

        plan = program.schemes()
        for t in decoder_tensors(program.spec.model):
            if t.name not in plan:
                raise PostconditionError(f"no scheme chosen for {t.name}")
            ts = plan[t.name]
            if ts.scheme in ("int8", "int4") and ts.group_size and t.shape[-1] % ts.group_size:
                raise PostconditionError(
                    f"{t.name}: group_size {ts.group_size} does not divide its input width "
                    f"{t.shape[-1]}"
                )
            if not t.is_matrix and ts.scheme != "fp32":
                raise PostconditionError(f"{t.name} is not a matrix but is planned as {ts.scheme}")
