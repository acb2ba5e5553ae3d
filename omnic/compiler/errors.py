"""How a compile fails: the exit status travels with the exception."""

from __future__ import annotations


class CompileError(Exception):
    """The compile failed; `exit_code` is what `omnic compile` returns."""

    exit_code = 1


class InputError(CompileError):
    """The spec or another input is invalid (exit status 2); nothing was written."""

    exit_code = 2
