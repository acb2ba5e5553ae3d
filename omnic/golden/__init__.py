"""Golden conformance, shared by every target: inputs, metrics, the tolerance table, the check.

Only the Target interface (`load`) and the Runner protocol (`reset`, `forward`) are used; a
target never implements a comparison.
"""

from omnic.golden.check import (
    GOLDEN_DIR,
    GoldenResult,
    GoldenSession,
    ReferenceData,
    load_inputs,
    verify_artifact,
)
from omnic.golden.inputs import GoldenInputs, inputs_for_spec, make_inputs
from omnic.golden.tolerances import TABLE, Tolerance, lookup

__all__ = [
    "GOLDEN_DIR", "GoldenInputs", "GoldenResult", "GoldenSession", "ReferenceData", "TABLE",
    "Tolerance", "inputs_for_spec", "load_inputs", "lookup", "make_inputs", "verify_artifact",
]
