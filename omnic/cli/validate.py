"""`omnic validate SPEC...` — every error of every spec at once, `FILE:LINE:COL field: message`.

Exit status 0 when every spec is valid (warnings allowed), 2 when any is not. Torch-free.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnic.compiler.validate import Validation


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="check specs; report every error with its file, line and field",
        description="Check spec files and report every error at once as FILE:LINE:COL "
        "field.path: message. Exit status 0 when all are valid, 2 otherwise.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec YAML files")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, no summary")
    p.set_defaults(func=run)


def check(path: str) -> "Validation":
    """Validate one file; an internal failure becomes a diagnostic, never a traceback."""
    from omnic.spec.load import Diagnostic
    from omnic.compiler.validate import Validation, validate_file

    try:
        return validate_file(path)
    except Exception as err:  # noqa: BLE001 - a bug in omnic must still not print a traceback
        if os.environ.get("OMNIC_DEBUG"):
            raise
        message = f"internal error while validating ({type(err).__name__}: {err}); " \
                  "set OMNIC_DEBUG=1 for the traceback"
        return Validation(path, diagnostics=[Diagnostic(None, (), f"{path}: {message}")])


def print_diagnostics(result: "Validation", file=None) -> None:
    """Errors first, then warnings, one per line (plain text: editors and CI parse it)."""
    out = file or sys.stderr

    def where(d):
        loc = d.location
        return (loc.file != result.file, loc.file, loc.line, loc.col) if loc else (False, "", 0, 0)

    for d in sorted(result.errors, key=where) + sorted(result.warnings, key=where):
        print(d, file=out)


def run(args) -> int:
    status = 0
    for path in args.specs:
        result = check(path)
        print_diagnostics(result)
        if not result.ok:
            status = 2
        if not args.quiet:
            n_err, n_warn = len(result.errors), len(result.warnings)
            state = "valid" if result.ok else f"{n_err} error{'s' * (n_err != 1)}"
            extra = f", {n_warn} warning{'s' * (n_warn != 1)}" if n_warn else ""
            print(f"{path}: {state}{extra}")
    return status
