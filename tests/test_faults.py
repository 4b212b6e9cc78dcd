"""Nothing is lost: stop signals save last.pth and exit 130/143, a non-finite loss stops before any bad save,
a locked or finished run folder is refused. The training faults use real ``train.py`` processes."""
import math
import os
import signal

import pytest
import torch

from engine.step_guard import StepGuard
from utils.errors import TrainingError


def losses(**values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value) for name, value in values.items()}


def test_guard_skips_the_allowed_number_of_non_finite_steps_then_stops(tmp_path, caplog):
    guard = StepGuard(max_nonfinite_steps=1, device=torch.device("cpu"), output_dir=tmp_path)
    guard.observe(torch.tensor(1.5))
    assert guard.check(1, 0, losses(global_=1.5), 1e-3).skip is False
    guard.observe(torch.tensor(math.nan))
    guard.observe(torch.tensor(2.0))  # a later finite micro-batch of the same step does not hide it
    assert guard.check(2, 0, losses(global_=2.0), 1e-3).skip is True
    assert "non-finite loss at step 2 (epoch 1)" in caplog.text and "step skipped (1 of train.max_nonfinite_steps=1)" \
        in caplog.text
    guard.observe(torch.tensor(0.7))
    assert guard.check(3, 0, losses(global_=0.7), 1e-3).skip is False  # the flag was reset
    guard.observe(torch.tensor(math.inf))
    with pytest.raises(TrainingError, match=r"(?s)non-finite loss at step 4 \(epoch 2\): global_ inf, itm 0\.5; "
                                            r"lr 0\.001\nno checkpoint had been saved yet\. Lower optim\.lr"):
        guard.check(4, 1, losses(global_=math.inf, itm=0.5), 1e-3)


def test_guard_turns_a_signal_into_a_flag_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with StepGuard(0, torch.device("cpu"), tmp_path) as guard:
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the guard
        guard.observe(torch.tensor(1.0))
        verdict = guard.check(7, 0, losses(global_=1.0), 1e-3)
        assert verdict.skip is False and verdict.stop_signal == signal.SIGTERM
        stop = guard.interrupted(verdict.stop_signal, 7)
        assert stop.exit_code == 143 and str(stop).startswith(f"SIGTERM received; {tmp_path / 'last.pth'} saved at "
                                                              f"step 7")
    assert signal.getsignal(signal.SIGTERM) is before
