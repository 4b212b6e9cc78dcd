"""The learning-rate schedule: linear warm-up, then a cosine decay to ``min_lr``, per epoch or per step."""
from __future__ import annotations

import math


def cosine(progress: float, min_ratio: float = 0.0) -> float:
    """min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2, for progress in [0, 1]."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: str = "cosine_per_epoch",
              warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimisation step ``step`` (0-based).

    ``cosine_per_epoch`` (the reference): constant within epoch e = step // steps_per_epoch,
    factor = cosine(e / epochs), so epoch 0 runs at the full lr and the last at cosine((E-1)/E).
    ``cosine_per_step``: factor = cosine((step - warmup) / (total - warmup)) with total = steps_per_epoch·epochs.
    During the first ``warmup_steps`` steps the factor is additionally multiplied by (step + 1) / warmup_steps
    (per epoch) or replaced by it (per step).
    """
    if schedule == "cosine_per_epoch":
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warmup * cosine((step // steps_per_epoch) / epochs, min_ratio)
    if schedule != "cosine_per_step":
        raise ValueError(f"unknown lr schedule {schedule!r}; expected cosine_per_epoch or cosine_per_step")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    total_steps = steps_per_epoch * epochs
    return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps), min_ratio)

