"""Mixed precision in one place: the ``train.amp`` / ``eval.amp`` autocast context and ``train.tf32``."""
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


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions on CUDA (``train.tf32``); the CPU is left alone.

    TF32 rounds a matmul's inputs to a 10-bit mantissa and accumulates and returns fp32 (about 7x the fp32 rate
    on an H100); PyTorch's own default is off. It applies to fp32 work only: under ``amp`` autocast the bf16/fp16
    matmuls are unaffected, and the loss similarities (computed in fp32 outside autocast) get TF32 inputs but
    fp32 outputs.
    """
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
