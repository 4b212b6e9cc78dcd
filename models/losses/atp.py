"""ATP: text tokens → image patches, scored group by group.

The fused states H (N, L, D) of the N = 3b ITM pairs (b positives, then 2b negatives) lose
position 0 and the rest is cut into G contiguous groups h_g (N, G, D).

Reference (``mode='reference'``): positions 1..L-1 are split into G equal windows
(L = 73, G = 2 → 1–36 and 37–72), each mean-pooled *including padding* (``mask_padding=False``),
scored by ``itm_local_head`` and trained with

    L_atp = (1 / NG) Σ_n Σ_g CE(itm_local_head(h_ng), c_n),   c_n = 1 for positives, 0 for negatives.

Adaptive (``mode='adaptive'``, :class:`AdaptiveATP`): each sample's own valid tokens (attention
mask = 1, position 0 excluded) are split into G contiguous, near-equal groups and mean-pooled, so
every group holds real tokens whatever the caption length; a group with no token (captions shorter
than G) is invalid. With z_g = itm_local_head(h_g) ∈ R² and a learned confidence c_g = u·h_g + β,

    w_g = exp(c_g) · 1[g valid] / Σ_k exp(c_k) · 1[k valid]
    z   = Σ_g w_g z_g
    L_atp = (1 / N) Σ_n CE(z_n, c_n).

Invalid groups get weight exactly 0 and a lone valid group weight exactly 1. See docs/atp_adaptive.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def atp_group_features(fused: torch.Tensor, attention_mask: torch.Tensor, mode: str = "reference", groups: int = 2,
                       mask_padding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pools the fused token states (position 0 dropped) into G contiguous groups.

    Token k of the L-1 pooled positions goes to group ⌊k·G / n⌋, where in ``reference`` mode k is
    its position (n = L-1: fixed windows, the first (L-1) mod G windows one longer when G does not
    divide L-1) and in ``adaptive`` mode k is its rank among the sample's valid tokens (n = their
    count).

    Args:
        fused: (N, L, D) fused encoder states.
        attention_mask: (N, L) 1 for real tokens, 0 for padding.
        mode: ``"reference"`` (fixed position windows) or ``"adaptive"`` (per-sample split of the
            valid tokens, padding always masked).
        mask_padding: reference mode only: average over real tokens instead of all positions.

    Returns:
        ``(group_feats (N, G, D), group_valid (N, G) bool)``; a group with nothing to average gets a
        zero feature and ``group_valid = False`` (never happens in reference mode without masking).
    """
    if mode not in ("reference", "adaptive"):
        raise ValueError(f"unknown ATP mode {mode!r}; expected 'reference' or 'adaptive'")
    if fused.ndim != 3 or attention_mask.shape != fused.shape[:2]:
        raise ValueError(f"fused must be (N, L, D) and attention_mask (N, L); got {tuple(fused.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    num_positions = fused.shape[1] - 1
    if not 1 <= groups <= num_positions:
        raise ValueError(f"groups must be in 1..{num_positions} for sequences of length {fused.shape[1]}, "
                         f"got {groups}")
    tokens = fused[:, 1:]  # (N, L-1, D)
    is_real = attention_mask[:, 1:] > 0  # (N, L-1)

    if mode == "reference":
        position = torch.arange(num_positions, device=fused.device)
        group_of_token = (position * groups // num_positions).expand_as(is_real)  # (N, L-1)
        counted = is_real if mask_padding else torch.ones_like(is_real)
    else:
        rank = is_real.long().cumsum(dim=1) - 1  # (N, L-1) rank among the valid tokens
        num_real = is_real.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
        group_of_token = (rank.clamp(min=0) * groups) // num_real  # (N, L-1)
        counted = is_real

    membership = F.one_hot(group_of_token, groups).to(tokens.dtype) * counted.unsqueeze(-1)  # (N, L-1, G)
    sums = torch.einsum("nkg,nkd->ngd", membership, tokens)  # (N, G, D)
    counts = membership.sum(dim=1)  # (N, G)
    group_feats = sums / counts.clamp(min=1).unsqueeze(-1)
    return group_feats, counts > 0


def atp_loss_reference(group_logits: torch.Tensor, labels: torch.Tensor,
                       group_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over every (valid) (sample, group): each group carries its sample's match label.

    Args:
        group_logits: (N, G, 2) ``itm_local_head`` logits; with N = 3b and G = 2 this is CE over 6b.
        labels: (N,) 1 for positive pairs, 0 for negatives.
        group_valid: optional (N, G) bool; invalid groups are left out of the mean.
    """
    if group_logits.ndim != 3 or group_logits.shape[2] != 2 or labels.shape != group_logits.shape[:1]:
        raise ValueError(f"group_logits must be (N, G, 2) and labels (N,); got {tuple(group_logits.shape)} "
                         f"and {tuple(labels.shape)}")
    num_groups = group_logits.shape[1]
    group_labels = labels.long()[:, None].expand(-1, num_groups)  # (N, G)
    if group_valid is not None:
        group_labels = group_labels.masked_fill(~group_valid, -100)
    return F.cross_entropy(group_logits.flatten(0, 1).float(), group_labels.flatten(), ignore_index=-100)


class AdaptiveATP(nn.Module):
    """Confidence-weighted aggregation of per-group match logits (the paper's adaptive ATP).

    Owns only ``confidence`` (Linear(D, 1) for D = ``hidden_size``, zero-initialised so training starts from
    uniform weights over the valid groups, i.e. the padding-masked average of the group logits). The match
    head is passed to :meth:`forward` so it stays ``itm_local_head`` on the model.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.confidence = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)

    def forward(self, group_feats: torch.Tensor, group_valid: torch.Tensor, labels: torch.Tensor,
                local_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(L_atp, group_weights (N, G))``, L_atp = mean_n CE(Σ_g w_ng z_ng, c_n); weights for logging.

        Args:
            group_feats: (N, G, D) from :func:`atp_group_features` (``mode='adaptive'``).
            group_valid: (N, G) bool; every sample needs at least one valid group.
            labels: (N,) 1 for positive pairs, 0 for negatives.
            local_head: the model's ``itm_local_head`` (D → 2).
        """
        if group_valid.shape != group_feats.shape[:2] or labels.shape != group_feats.shape[:1]:
            raise ValueError(f"group_valid must be (N, G) and labels (N,) for group_feats "
                             f"{tuple(group_feats.shape)}; got {tuple(group_valid.shape)} and {tuple(labels.shape)}")
        if not group_valid.any(dim=1).all():
            raise ValueError("AdaptiveATP: a sample has no valid group (no real token after position 0)")
        group_logits = local_head(group_feats).float()  # (N, G, 2)
        scores = self.confidence(group_feats).squeeze(-1).float()  # (N, G)
        group_weights = F.softmax(scores.masked_fill(~group_valid, float("-inf")), dim=1)  # (N, G)
        logits = (group_weights.unsqueeze(-1) * group_logits).sum(dim=1)  # (N, 2)
        return F.cross_entropy(logits, labels.long()), group_weights
