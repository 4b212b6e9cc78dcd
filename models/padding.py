"""Trimming right padding: a batch of padded captions cut to its longest caption.

Padding is appended (``[PAD]`` ids, mask 0) and every MED pass masks padded *keys*, so a position after
the last real token of every row influences no other position; dropping those columns changes only the
states of padded queries, which the trimmed passes never read (see docs/method.md, "Padding trimming").
"""
from __future__ import annotations

import torch


def longest_caption(attention_mask: torch.Tensor) -> int:
    """Index after the last real token of any row of a (B, L) mask; at least 1 (when L >= 1).

    On a CUDA mask this reads one integer back to the host.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, L), got shape {tuple(attention_mask.shape)}")
    if attention_mask.shape[1] == 0:
        return 0
    columns = attention_mask.bool().any(dim=0)  # (L,)
    last = int(torch.arange(1, columns.numel() + 1, device=columns.device).mul(columns).max())
    return max(last, 1)


def trim_to_longest(ids: torch.Tensor, mask: torch.Tensor, *others: torch.Tensor,
                    length: int | None = None) -> tuple[torch.Tensor, ...]:
    """Cuts (B, L) ``ids``, ``mask`` (1 for real tokens) and any ``others`` (B, L, ...) (e.g. labels) to the longest
    caption's length: ``(ids, mask, *others)`` as (B, L') views with L' <= L, no copy. ``length``, if already known
    (e.g. computed on the CPU copy of the batch), saves computing it from ``mask``.
    """
    keep = longest_caption(mask) if length is None else length
    if keep >= ids.shape[1]:
        return (ids, mask, *others)
    return tuple(t[:, :keep] for t in (ids, mask, *others))
