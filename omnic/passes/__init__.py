"""Passes over a Program. One pass per module; importing this package registers them all.

Public API: `run_passes`, `get_pass`, `register_pass`, `PassResult`, `PassError`, pipelines.
"""

from omnic.passes.base import (
    PassError,
    PassRecord,
    PassResult,
    PostconditionError,
    PreconditionError,
    PurityError,
    get_pass,
    register_pass,
    registered_passes,
    run_passes,
)
from omnic.passes import faults, quant_plan, verify_inventory  # noqa: F401  (registration)
from omnic.passes.pipelines import DEFAULT, PIPELINES

__all__ = [
    "DEFAULT", "PIPELINES", "PassError", "PassRecord", "PassResult", "PostconditionError",
    "PreconditionError", "PurityError", "get_pass", "register_pass", "registered_passes",
    "run_passes",
]
