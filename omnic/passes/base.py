"""The pass interface, the pass registry and the pass runner.

A pass is a class registered under a namespaced id (`namespace::name`, as coremltools names its
passes) with three methods, after onnx-ir's pass infrastructure:

    requires(value) -> None        raise PreconditionError when the input is not acceptable
    call(value) -> PassResult      PassResult(value, changed)
    ensures(value) -> None         raise PostconditionError when the output breaks a promise

and a declared purity, `in_place` (False unless the class says otherwise), which the runner
checks as onnx-ir's `PassBase` does:
- a pure pass (in_place False) never mutates its input: on a Program the runner compares the
  version counters of every weight before and after the call. Model-level passes over a Program
  are pure: they return a new Program (`program.evolve(...)`); the decoder module is shared, so a
  pass that changes weights copies the module first.
- an in-place pass returns the very object it was given (a backend's passes over its own graph,
  e.g. an onnx_ir.Model, rewrite it in place).

ref: https://github.com/onnx/ir-py/blob/main/src/onnx_ir/passes/_pass_infra.py

The value is a Program for the model-level pipeline (omnic.passes.pipelines) and whatever a
target's own pipeline works on for that target's passes (omnic/targets/<backend>/passes.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from omnic.passes.program import Program


class PassError(Exception):
    """A pass failed; the message names the pass and the passes that ran before it."""


class PreconditionError(Exception):
    """`requires` rejected the program."""


class PostconditionError(Exception):
    """`ensures` found the pass broke one of its promises."""


@dataclass(frozen=True)
class PassResult:
    program: Any  # the pass's output: a Program, or the value a target's pipeline works on
    changed: bool


@dataclass(frozen=True)
class PassRecord:
    """What ran: goes to the manifest (id, changed) and to its timings section (seconds)."""

    id: str
    changed: bool
    seconds: float


class PurityError(Exception):
    """A pass broke its declared purity (a pure pass mutated its input, an in-place one did not
    return it)."""


class Pass(Protocol):
    id: str
    in_place: bool  # optional on the class; False when absent

    def requires(self, value: Any) -> None: ...

    def call(self, value: Any) -> PassResult: ...

    def ensures(self, value: Any) -> None: ...


_PASSES: dict[str, type] = {}


def register_pass(pass_id: str) -> Callable[[type], type]:
    """Class decorator: make a pass available under a namespaced id such as `quant::plan`."""
    if "::" not in pass_id:
        raise ValueError(f"pass ids are namespaced ('common::x'); got {pass_id!r}")

    def deco(cls: type) -> type:
        if pass_id in _PASSES and _PASSES[pass_id] is not cls:
            raise ValueError(f"pass {pass_id!r} is registered twice")
        cls.id = pass_id
        _PASSES[pass_id] = cls
        return cls

    return deco


def get_pass(pass_id: str) -> Pass:
    """An instance of the pass registered as `pass_id`."""
    from omnic import passes  # noqa: F401  (imports the built-in pass modules)

    if pass_id not in _PASSES:
        raise KeyError(f"unknown pass {pass_id!r}; known: {sorted(_PASSES)}")
    return _PASSES[pass_id]()


def registered_passes() -> list[str]:
    from omnic import passes  # noqa: F401

    return sorted(_PASSES)


def weights_versions(program: Program) -> dict[str, int]:
    """Version counters of every tensor of the decoder and the components (bumped on write)."""
    modules = {"": program.decoder, **{f"{n}.": c.module for n, c in program.components.items()}}
    return {prefix + k: v._version for prefix, m in modules.items()
            for k, v in m.state_dict(keep_vars=True).items()}


def _checked_call(p: Pass, value: Any) -> PassResult:
    """`p.call(value)`, holding the pass to its declared purity."""
    in_place = bool(getattr(p, "in_place", False))
    before = weights_versions(value) if isinstance(value, Program) and not in_place else None
    result = p.call(value)
    if in_place and result.program is not value:
        raise PurityError("declared in_place but returned a new object")
    if before is not None and weights_versions(value) != before:
        raise PurityError("declared pure but modified the weights of its input program")
    return result


def run_passes(
    program: Any, pipeline: list[str], on_pass: Callable[[PassRecord], None] | None = None
) -> tuple[Any, list[PassRecord]]:
    """Run the passes of `pipeline` in order.

    Args:
        program: the input: a Program (model-level passes, never mutated) or a target's own
            value (its in-place passes rewrite it).
        pipeline: pass ids, in order.
        on_pass: called after each pass with its record (progress display).

    Returns:
        The final program and one record per pass.

    Raises:
        PassError: "quant::plan failed after [common::verify_inventory]: <reason>".
    """
    records: list[PassRecord] = []
    for pass_id in pipeline:
        p = get_pass(pass_id)
        before = [r.id for r in records]
        start = time.perf_counter()
        try:
            p.requires(program)
            result = _checked_call(p, program)
            p.ensures(result.program)
        except PassError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure is reported with its context
            stage = {PreconditionError: "precondition", PostconditionError: "postcondition",
                     PurityError: "purity"}
            kind = stage.get(type(err), type(err).__name__)
            raise PassError(f"{pass_id} failed after [{', '.join(before)}]: {kind}: {err}") from err
        record = PassRecord(pass_id, bool(result.changed), time.perf_counter() - start)
        records.append(record)
        program = result.program
        if on_pass is not None:
            on_pass(record)
    return program, records
