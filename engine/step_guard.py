"""What may stop or skip an optimizer step: a non-finite loss, a stop signal.

:meth:`StepGuard.observe` notes each micro-batch's loss on the device (no host sync);
:meth:`StepGuard.check` runs once per optimizer step: one host sync (and under torchrun one all-reduce, so
every rank takes the same decision) for both the non-finite flag and the signal flag. A non-finite loss
raises :class:`~utils.errors.TrainingError` naming the step, each loss term and the lr, before any
checkpoint holds the bad weights, unless ``train.max_nonfinite_steps`` allows skipping that many steps.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from utils.dist import get_world_size
from utils.errors import TrainingError
from utils.interrupt import RunInterrupted, StopSignals

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    skip: bool  # a non-finite loss within the allowed number: no optimizer step, gradients dropped
    stop_signal: int  # SIGINT/SIGTERM received by some rank (0 = none): save and stop after this step


class StepGuard:
    """Judges each optimizer step; :meth:`install` makes SIGINT/SIGTERM a flag until :meth:`restore`.

    Args:
        max_nonfinite_steps: how many steps with a non-finite loss are skipped before the run stops.
        output_dir: the run folder, named in the messages.
    """

    def __init__(self, max_nonfinite_steps: int, device: torch.device, output_dir: Path):
        self.max_nonfinite_steps = max_nonfinite_steps
        self.output_dir = Path(output_dir)
        self.skipped = 0
        self.signals = StopSignals()
        self._nonfinite = torch.zeros((), dtype=torch.int32, device=device)  # any bad micro-batch since the last step

    def install(self) -> None:
        self.signals.install()

    def restore(self) -> None:
        self.signals.restore()

    def observe(self, total: torch.Tensor) -> None:
        """Notes whether this micro-batch's weighted loss is finite (stays on the device)."""
        self._nonfinite |= (~torch.isfinite(total.detach())).int()

    def check(self, step: int, epoch: int, losses: dict[str, torch.Tensor], lr: float) -> Verdict:
        """Decides about optimizer step ``step`` (1-based); call it on every rank.

        Raises:
            TrainingError: the loss is not finite and no skip is left.
        """
        flags = torch.stack([self._nonfinite, self._nonfinite.new_tensor(self.signals.received)])
        if get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, signum = flags.tolist()  # the one host sync of the step
        self._nonfinite.zero_()
        if not nonfinite:
            return Verdict(False, signum)
        self.skipped += 1
        terms = ", ".join(f"{name} {value.item():.4g}" for name, value in losses.items())
        what = f"non-finite loss at step {step} (epoch {epoch + 1}): {terms}; lr {lr:.3g}"
        if self.skipped > self.max_nonfinite_steps:
            kept = (f"the checkpoints in {self.output_dir} are from before it and were kept"
                    if (self.output_dir / "last.pth").is_file() else "no checkpoint had been saved yet")
            raise TrainingError(f"{what}\n{kept}. Lower optim.lr, set train.clip_grad_norm, or skip up to N such "
                                f"steps with train.max_nonfinite_steps=N (now {self.max_nonfinite_steps})")
        log.warning("%s: step skipped (%d of train.max_nonfinite_steps=%d)", what, self.skipped,
                    self.max_nonfinite_steps)
        return Verdict(True, signum)

    def interrupted(self, signum: int, step: int) -> RunInterrupted:
        """The exception to raise once ``last.pth`` is saved after a stop signal."""
        return RunInterrupted(signum, f"{signal.Signals(signum).name} received; {self.output_dir / 'last.pth'} saved "
                                      f"at step {step}. Run the same command (train.resume=auto) to continue")
