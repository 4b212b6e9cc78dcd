"""How the entry points end: the project's errors (:mod:`utils.errors`) as ``error: <message>`` and exit code 2.

The message also goes into the run's ``log.txt``; ``--debug`` or ``CADA_DEBUG=1`` re-raises it with its
traceback. A run stopped by SIGINT/SIGTERM after saving exits with 130/143. Other exceptions keep their traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from utils.errors import CadaError
from utils.interrupt import RunInterrupted

EXIT_USER_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (or set CADA_DEBUG=1)")


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("CADA_DEBUG", "") not in ("", "0")


def report(message: str) -> None:
    """Writes ``message`` on stderr as is, and into every log file the root logger writes (``log.txt``)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    record = logging.LogRecord("cada", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_main(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Calls ``main(argv)`` (default ``sys.argv[1:]``; ``main`` parses it, with :func:`add_debug_flag`) and
    exits with 2 on a :class:`CadaError`, 128 + signal number when the run was interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main(argv)
    except CadaError as error:
        if debug_requested(argv):
            raise
        report(f"error: {error}")
        sys.exit(EXIT_USER_ERROR)
    except RunInterrupted as stop:
        report(f"stopped: {stop}")
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training's handler: nothing to save
        if debug_requested(argv):
            raise
        report("stopped: interrupted (SIGINT)")
        sys.exit(130)
