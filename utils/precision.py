"""Mixed precision in one place: the ``train.amp`` / ``eval.amp`` names and their autocast context."""
from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` to bf16/fp16 on ``device``, or a no-op for ``amp="off"``."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be off, bf16 or fp16, got {amp!r}")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
