"""How the entry points end: the project's own errors as ``error: <message>`` and exit code 2, no traceback.

``train.py``, ``eval.py`` and ``retrieve.py`` run their ``main`` through :func:`run_main`. A
:class:`~utils.errors.CadaError` is a problem the user can fix (a config key, a file, the run folder): it is
printed on stderr, and into the run's ``log.txt`` when logging writes one, and the process exits with 2.
``--debug`` or ``CADA_DEBUG=1`` re-raises it with its traceback. A run stopped by SIGINT/SIGTERM after
saving exits with 130/143. Any other exception is a bug and keeps its traceback.
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
    """Calls ``main(argv)`` (default ``sys.argv[1:]``) and turns the project's errors into exit codes.

    Args:
        main: the entry point's body; it parses ``argv`` itself (with :func:`add_debug_flag`).
        argv: command-line arguments without the program name.

    Raises:
        SystemExit: 2 on a :class:`CadaError`, 128 + signal number when the run was interrupted.
    """
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
