"""Global image–text alignment loss (the CADA release calls it ``ndf_loss``).

With L2-normalised image features v̂ (B, D), text features t̂ (B, D), person ids y (B,), a fixed
logit scale s and ε = 1e-8:

    S_ij = s · v̂_i · t̂_j
    q_ij = 1[y_i = y_j] / Σ_k 1[y_i = y_k]
    P^{i2t} = softmax_j(S_ij),   P^{t2i} = softmax_j(S_ji)

    ℓ(P) = w_f · (1/B²) Σ_ij P_ij (log P_ij − log(q_ij + ε))       forward KL (IRRA's SDM)
         + w_r · (1/B²) Σ_ij q_ij (log(q_ij + ε) − log P_ij)       reverse KL
         + w_c · (1/B)  Σ_i  −Σ_j q_ij log P_ij                    soft-label cross-entropy

    L_glb = (ℓ(P^{i2t}) + ℓ(P^{t2i})) / 2

The reference averages both KL terms over all B² entries (so they weigh 1/B relative to the
cross-entropy); that is reproduced exactly, and (w_f, w_r, w_c) = (1, 1, 1) is the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def global_alignment_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, person_ids: torch.Tensor,
                          scale: float = 50.0, eps: float = 1e-8,
                          weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Symmetric KL + soft-label cross-entropy alignment over a (global) batch of pairs: the fp32 scalar L_glb
    (S computed in fp32 even inside ``torch.autocast``).

    Args:
        image_feats: (B, D) L2-normalised image embeddings; row i pairs with text row i.
        text_feats: (B, D) L2-normalised text embeddings.
        person_ids: (B,) integer identity of each pair.
        scale: fixed logit scale s (reference 50 = 1 / 0.02).
        eps: ε added to the target distribution inside the logarithms.
        weights: (forward KL, reverse KL, cross-entropy) term weights.
    """
    if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
        raise ValueError(f"image_feats {tuple(image_feats.shape)} and text_feats {tuple(text_feats.shape)} "
                         "must both be (B, D)")
    if person_ids.shape != image_feats.shape[:1]:
        raise ValueError(f"person_ids must be (B,) = ({image_feats.shape[0]},), got {tuple(person_ids.shape)}")
    same_identity = (person_ids[:, None] == person_ids[None, :]).float()  # (B, B), symmetric
    target = same_identity / same_identity.sum(dim=1, keepdim=True)  # (B, B) rows sum to 1
    log_target = torch.log(target + eps)

    # fp32 under any autocast: at s = 50 the logits reach ~35, where bf16's spacing is 0.25
    with torch.autocast(image_feats.device.type, enabled=False):
        logits = scale * image_feats.float() @ text_feats.float().t()  # (B, B) image i vs text j
    image_to_text = _alignment_terms(logits, target, log_target, weights)
    text_to_image = _alignment_terms(logits.t(), target, log_target, weights)
    return (image_to_text + text_to_image) / 2


def _alignment_terms(logits: torch.Tensor, target: torch.Tensor, log_target: torch.Tensor,
                     weights: tuple[float, float, float]) -> torch.Tensor:
    """ℓ(P) for P = softmax over the rows of ``logits`` (B, B)."""
    forward_weight, reverse_weight, ce_weight = weights
    log_prob = F.log_softmax(logits, dim=1)  # (B, B)
    prob = log_prob.exp()
    forward_kl = (prob * (log_prob - log_target)).mean()
    reverse_kl = (target * (log_target - log_prob)).mean()
    soft_ce = -(target * log_prob).sum(dim=1).mean()
    return forward_weight * forward_kl + reverse_weight * reverse_kl + ce_weight * soft_ce
