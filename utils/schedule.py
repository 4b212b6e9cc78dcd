"""Per-step schedules: the learning rate (linear warm-up, then cosine decay to ``min_lr``) and the ramp of
the local (ITM, ATP) loss weights."""
from __future__ import annotations

import math


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimisation step ``step`` (0-based).

    factor = (step + 1) / warmup_steps during warm-up, then
    factor = min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2 with t = (step - warmup) / (total - warmup).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_ramp(step: int, ramp_steps: int) -> float:
    """Loss-weight multiplier at optimisation step ``step`` (0-based): min(1, step / ramp_steps); 1 if ramp_steps = 0.

    Starts at 0: hard negatives picked by an untrained model carry no signal in the first steps.
    """
    return min(1.0, step / ramp_steps) if ramp_steps > 0 else 1.0
