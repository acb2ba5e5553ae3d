"""`omnic` — the top-level program. Each subcommand lives in its own module under omnic/cli/,
exposes `register(subparsers)`, parses its arguments and calls one library function.

Exit statuses across commands: 0 success, 1 a check failed (golden, diff rules), 2 bad input,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); both leave no half-written build.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator

# The order here is the order of `omnic --help`: the pipeline first, then the tools around it.
COMMANDS = [
    "validate",   # spec → every error at once, FILE:LINE:COL field: message
    "resolve",    # spec → fully explicit spec
    "plan",       # spec → memory plan against the device
    "schema",     # the JSON Schema of specs (and manifests)
    "presets",    # list / show presets
    "import_model",  # HF directory or GGUF file → spec
    "compile",    # spec → verified artifacts + manifest
    "run",        # greedy generation from a spec (reference) or a build (any target)
    "verify",     # re-run the golden checks of a build
    "inspect",    # summarise one build
    "diff",       # compare two builds
    "golden",     # golden/ maintenance
    "bench",      # runtime speed of every artifact
    "cache",      # the build cache: list, prune
    "farm",       # a matrix of compiles on Ray, with a report
]


def build_parser() -> argparse.ArgumentParser:
    from omnic import __version__

    parser = argparse.ArgumentParser(prog="omnic", description="Declarative model compiler.")
    parser.add_argument("--version", action="version", version=f"omnic {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       default=0, help="warnings and errors only, from every stage and target")
    level.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       help="debug lines too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"omnic.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"omnic.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM (sent by `timeout`, CI cancellation, `docker stop`), raised in the main thread as
    SIGINT raises KeyboardInterrupt: a BaseException, so `except Exception` does not swallow it
    and every `finally` and cleanup on the way out runs (a compile removes its staging dir)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs; the previous handler comes back after
    (main() also runs inside tests). Only the main thread may set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from omnic.cli import logs

    # `omnic -q CMD` and `omnic CMD -q` (where the command has its own --quiet) both quieten
    logs.setup(logs.QUIET if getattr(args, "quiet", False) else args.verbosity)
    try:
        with _sigterm_raises():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM  # 143, the status a shell reports for a SIGTERM'd process


if __name__ == "__main__":
    sys.exit(main())
