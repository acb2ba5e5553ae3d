"""The one log handler of the command line: every library line goes through `logging`.

Library modules log with `logging.getLogger(__name__)` and never print; the CLI installs a rich
handler on the `omnic` logger, so `-q` (warnings and errors only) and `-v` (debug) govern every
line, the targets' included.
"""

from __future__ import annotations

import logging

QUIET, NORMAL, VERBOSE = -1, 0, 1


def setup(verbosity: int = NORMAL) -> None:
    """Send the `omnic` loggers to stderr through rich, at the level `verbosity` asks for."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("omnic")
    for handler in list(logger.handlers):
        if getattr(handler, "_omnic_cli", False):
            logger.removeHandler(handler)
    handler = RichHandler(console=Console(stderr=True, highlight=False), show_time=False,
                          show_path=False, show_level=False, markup=False,
                          rich_tracebacks=False)
    handler._omnic_cli = True  # type: ignore[attr-defined]
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
