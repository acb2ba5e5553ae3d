"""The pass interface, the pass registry and the pass runner.

A pass is a class registered under a namespaced id (`namespace::name`, as coremltools names its
passes) with three methods, after onnx-ir's pass infrastructure:

    requires(program) -> None      raise PreconditionError when the input is not acceptable
    call(program) -> PassResult    PassResult(program, changed); never mutate the input program
    ensures(program) -> None       raise PostconditionError when the output breaks a promise

ref: https://github.com/onnx/ir-py/blob/main/src/onnx_ir/passes/_pass_infra.py

Passes return a new Program (`program.evolve(...)`); the decoder module is shared, so a pass that
changes weights copies the module first. Pipelines are explicit lists of ids (see pipelines.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from omnic.passes.program import Program


class PassError(Exception):
    """A pass failed; the message names the pass and the passes that ran before it."""


class PreconditionError(Exception):
    """`requires` rejected the program."""


class PostconditionError(Exception):
    """`ensures` found the pass broke one of its promises."""


@dataclass(frozen=True)
class PassResult:
    program: "Program"
    changed: bool


@dataclass(frozen=True)
class PassRecord:
    """What ran: goes to the manifest (id, changed) and to its timings section (seconds)."""

    id: str
    changed: bool
    seconds: float


class Pass(Protocol):
    id: str

    def requires(self, program: "Program") -> None: ...

    def call(self, program: "Program") -> PassResult: ...

    def ensures(self, program: "Program") -> None: ...


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


def run_passes(
    program: "Program", pipeline: list[str], on_pass: Callable[[PassRecord], None] | None = None
) -> tuple["Program", list[PassRecord]]:
    """Run the passes of `pipeline` in order.

    Args:
        program: the input; never mutated.
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
            result = p.call(program)
            p.ensures(result.program)
        except PassError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure is reported with its context
            stage = {PreconditionError: "precondition", PostconditionError: "postcondition"}
            kind = stage.get(type(err), type(err).__name__)
            raise PassError(f"{pass_id} failed after [{', '.join(before)}]: {kind}: {err}") from err
        record = PassRecord(pass_id, bool(result.changed), time.perf_counter() - start)
        records.append(record)
        program = result.program
        if on_pass is not None:
            on_pass(record)
    return program, records
