"""Stopping a training run cleanly on SIGINT/SIGTERM: note the signal, finish the step, save, exit 130/143.

The handler only sets a flag; the training loop reads it once per optimizer step (all-reduced under
torchrun, see :class:`engine.step_guard.StepGuard`, so every rank stops at the same step), saves
``last.pth`` and raises :class:`RunInterrupted`, which the entry point turns into exit code 128 + signal
number. A second Ctrl-C while saving still interrupts (the default handler is back by then).
"""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """Training stopped on a signal after saving; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Between :meth:`install` and :meth:`restore`, SIGINT/SIGTERM set :attr:`received` instead of stopping
    (in the main thread only, as Python allows signal handlers nowhere else; elsewhere this is a no-op)."""

    def __init__(self):
        self.received = 0  # the signal number, 0 = none
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum
        # A second Ctrl-C acts as without us (the user insists); SIGTERM stays a flag: torchrun's agent sends
        # it to ranks that already got the terminal's SIGINT, and they must still save.
        signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def ignore_interrupt_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, but only the main process
    should react (it finishes the step and saves); a worker that died on it would fail the last batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
