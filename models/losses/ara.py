"""ARA: image regions → text attributes, by predicting masked attribute words from the image.

Attribute words are masked on the data side (datasets/ara_masking.py). With M the set of masked
positions and f the image-conditioned decoder's vocabulary logits at each position,

    L_ara = (1 / |M|) Σ_{(i,l) ∈ M} CE(f_il, x_il)          (0 when M is empty)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.vocab import IGNORE_INDEX


def ara_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked positions, predicted at their own positions (no shift); exactly 0 (finite
    zero gradient, no NaN) when nothing is masked.

    Args:
        logits: (B, L, V) decoder vocabulary logits.
        labels: (B, L) original ids at masked positions, −100 elsewhere.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, L, V) and labels (B, L); got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    num_masked = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / num_masked
