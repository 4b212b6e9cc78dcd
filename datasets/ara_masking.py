"""ARA's data side: which caption positions are masked for the decoder to predict (method.md §2, ARA).

Candidate groups (one attribute word's WordPieces in token mode, one ``(JJ CC?)* NN? NNS?`` chunk in
phrase mode; see datasets/attributes.py) are found once per caption and packed into a (B, L) tensor
of per-sample group ids (−1 = not a candidate). Each (sample, group) is masked independently with
probability p, all its positions replaced by ``[MASK]``; the labels keep the original ids there and
``IGNORE_INDEX`` elsewhere (the loss itself is ``models.losses.ara.ara_loss``).
"""
from __future__ import annotations

import torch

from utils.vocab import CLS_ID, DEC_ID, ENC_ID, IGNORE_INDEX, MASK_ID, PAD_ID, SEP_ID, UNK_ID

# Never masked, whatever a candidate list says: structure tokens, and [UNK]/[MASK], whose
# prediction teaches nothing about the image.
NEVER_MASKED_IDS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, DEC_ID, ENC_ID)


def pack_candidate_groups(groups_per_sample: list[list[list[int]]], seq_len: int) -> torch.Tensor:
    """Packs per-caption candidate groups (lists of token positions) into (B, L) int64 group ids: position l of
    caption i holds the index of its group within caption i, or −1. Empty groups are skipped, so every id is
    below L = ``seq_len``. Raises ValueError for a position outside 0..L-1 or listed in two groups.
    """
    group_ids = torch.full((len(groups_per_sample), seq_len), -1, dtype=torch.long)
    for sample, groups in enumerate(groups_per_sample):
        for group_index, positions in enumerate(group for group in groups if group):
            for position in positions:
                if not 0 <= position < seq_len:
                    raise ValueError(f"caption {sample}, group {group_index}: position {position} is outside "
                                     f"0..{seq_len - 1}")
                if group_ids[sample, position] != -1:
                    raise ValueError(f"caption {sample}: position {position} is in groups "
                                     f"{int(group_ids[sample, position])} and {group_index}")
                group_ids[sample, position] = group_index
    return group_ids


def mask_attribute_tokens(input_ids: torch.Tensor, group_ids: torch.Tensor, prob: float,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks whole candidate groups, one Bernoulli(prob) draw per (sample, group), prob in [0, 1].

    Positions holding a token of ``NEVER_MASKED_IDS`` stay unmasked even if a candidate list names
    them (so a buggy list can never mask ``[CLS]``/``[SEP]``/``[PAD]``/``[ENC]``/``[DEC]``).

    Args:
        group_ids: (B, L) from :func:`pack_candidate_groups` (−1 = not a candidate, ids below L).
        generator: the draws are made on its device (default: the ids' device).

    Returns ``(masked_ids (B, L), labels (B, L))``: masked positions hold ``[MASK]`` in ``masked_ids`` and the
    original id in ``labels``; every other label is −100.
    """
    if input_ids.shape != group_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and group_ids {tuple(group_ids.shape)} differ")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"masking probability must be in [0, 1], got {prob}")
    group_ids = group_ids.to(input_ids.device)
    # Group ids are below L (see pack_candidate_groups): drawing L per caption needs no device sync.
    draw_device = generator.device if generator is not None else input_ids.device
    group_masked = torch.rand(input_ids.shape, generator=generator,
                              device=draw_device).to(input_ids.device) < prob  # (B, L) indexed by group id
    never = torch.tensor(NEVER_MASKED_IDS, device=input_ids.device)
    maskable = (group_ids >= 0) & ~torch.isin(input_ids, never)  # (B, L)
    masked = maskable & group_masked.gather(1, group_ids.clamp(min=0))  # (B, L)
    masked_ids = input_ids.masked_fill(masked, MASK_ID)
    labels = input_ids.masked_fill(~masked, IGNORE_INDEX)
    return masked_ids, labels
