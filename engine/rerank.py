"""Second retrieval stage: re-score each query's top-k images by cosine with the fused encoder's ITM logit.

For query q with cosines s_q (G,) and candidates C_q = the k highest cosines (ties: lower gallery index),
the final ranking is C_q ordered by s_qg + ITM_qg (ties: lower gallery index), then the other G - k images
in cosine order (ties: lower gallery index). ``rerank`` returns a (c, G) score chunk whose stable
descending sort (as in ``utils.metrics``) gives exactly this ranking.

Why the returned scores are ranking keys rather than cos + logit: lifting the candidates above the rest by
adding a per-row offset to cos + logit rounds in floating point, and two distinct combined scores can
become equal, after which the tie would be broken by gallery index instead of by the combined score. So
the order inside C_q is decided in float64 on the exact combined scores, and candidate j of the final
order (j = 0..k-1) gets the score  m_q + (k - j),  with m_q the highest cosine outside C_q (0 when
k >= G). For |s| <= 2^20 (cosines are within [-1, 1]) and k < 2^22 the fp32 spacing near m_q + k is
below 1, so the keys strictly decrease along the final order and all stay above every remaining score.
The combined scores are recoverable from the returned candidate indices and logits.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from models.padding import trim_to_longest
from utils.precision import autocast

# Largest |score| for which m_q + (k - j) is exact enough in fp32 to keep every step strictly increasing.
MAX_ABS_SCORE = 2.0**20

MatchLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RerankResult(NamedTuple):
    """Output of ``rerank``.

    Attributes:
        scores: (c, G) fp32 ranking keys (see the module docstring).
        candidate_indices: (c, k) gallery indices of the top-k by cosine, in cosine order.
        candidate_logits: (c, k) fp32 ITM match logits of those candidates.
    """

    scores: torch.Tensor
    candidate_indices: torch.Tensor
    candidate_logits: torch.Tensor


def topk_candidates(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)``, both (c, min(k, G)): each row's k highest scores, descending, ties to the lower index.

    ``torch.topk`` picks an unspecified subset among values tied with the k-th, so it is only used to find
    the k-th value; the set is then rebuilt as every score above it plus the lowest-indexed equal ones.

    Args:
        scores: (c, G) scores, no NaN.
        k: number of candidates; values above G are clamped to G.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (c, G), got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.numel() and scores.aminmax().max.isnan():  # aminmax propagates NaN
        raise ValueError("scores hold NaN; candidate order would be undefined")
    num_rows, gallery_size = scores.shape
    k = min(k, gallery_size)
    if k == gallery_size:
        selected = torch.ones_like(scores, dtype=torch.bool)
    else:
        kth_value = torch.topk(scores, k, dim=1).values[:, -1:]  # (c, 1)
        selected = scores > kth_value  # (c, G), then completed with the tied values below
        at_kth = scores == kth_value  # (c, G)
        still_needed = k - selected.sum(dim=1, keepdim=True)  # (c, 1), >= 1
        if (at_kth.sum(dim=1, keepdim=True) > still_needed).any():  # more ties than places: lowest indices win
            at_kth &= at_kth.cumsum(dim=1, dtype=torch.int32) <= still_needed
        selected |= at_kth
        del at_kth
    indices = selected.nonzero(as_tuple=True)[1].view(num_rows, k)  # (c, k) ascending gallery index
    order = torch.sort(scores.gather(1, indices), dim=1, descending=True, stable=True).indices
    indices = indices.gather(1, order)
    return scores.gather(1, indices), indices


@torch.no_grad()
def rerank(
    scores: torch.Tensor,
    k: int,
    match_logits: MatchLogits,
    query_offset: int = 0,
    batch_queries: int = 16,
    query_order: torch.Tensor | None = None,
) -> RerankResult:
    """Re-ranks each row's top-k by ``cos + ITM logit``, the rest in cosine order; the scores sort into the ranking.

    Args:
        scores: (c, G) cosine scores of c queries against the gallery (a chunk from
            ``utils.metrics.iter_similarity_chunks``).
        k: candidates re-scored per query (k_test); clamped to G.
        match_logits: ``f(query_index (n,) long, gallery_index (n, k) long) -> (n, k)`` ITM match-class
            logits; query indices are global (``query_offset`` + row), tensors on the device of ``scores``.
        query_offset: global index of the first row of ``scores``.
        batch_queries: queries per ``match_logits`` call.
        query_order: (c,) permutation of the rows whose consecutive runs form the groups (e.g. by caption
            length, so that a group's captions trim to similar lengths); None keeps row order. Result unchanged.
    """
    if batch_queries < 1:
        raise ValueError(f"batch_queries must be >= 1, got {batch_queries}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be (c, G), got shape {tuple(scores.shape)}")
    if scores.numel():
        low, high = (value.item() for value in scores.aminmax())
        if not (math.isfinite(low) and math.isfinite(high)) or max(-low, high) > MAX_ABS_SCORE:
            raise ValueError(f"scores must be finite cosines (|s| <= {MAX_ABS_SCORE:g}), got range [{low}, {high}]")
    num_rows, gallery_size = scores.shape
    candidate_scores, candidate_indices = topk_candidates(scores, k)  # (c, k), cosine order
    k = candidate_indices.shape[1]

    candidate_logits = candidate_match_logits(match_logits, candidate_indices, query_offset, batch_queries,
                                              query_order)  # (c, k)

    # Order candidates by the exact combined score; pre-sorting by gallery index makes ties go to the lower one.
    by_gallery = candidate_indices.argsort(dim=1)  # (c, k) — indices within a row are distinct
    combined = candidate_scores.double().gather(1, by_gallery) + candidate_logits.double().gather(1, by_gallery)
    final_order = torch.sort(combined, dim=1, descending=True, stable=True).indices  # (c, k)
    reranked_indices = candidate_indices.gather(1, by_gallery).gather(1, final_order)  # (c, k)

    reranked = scores.float().clone()  # (c, G)
    reranked.scatter_(1, candidate_indices, float("-inf"))
    if k < gallery_size:
        best_remaining = reranked.amax(dim=1, keepdim=True)  # (c, 1) m_q
    else:
        best_remaining = reranked.new_zeros(num_rows, 1)
    steps = torch.arange(k, 0, -1, device=scores.device, dtype=torch.float32)  # (k,) k, k-1, ..., 1
    reranked.scatter_(1, reranked_indices, best_remaining + steps)
    return RerankResult(reranked, candidate_indices, candidate_logits)


def candidate_match_logits(match_logits: MatchLogits, candidate_indices: torch.Tensor, query_offset: int,
                           batch_queries: int, query_order: torch.Tensor | None) -> torch.Tensor:
    """(c, k) fp32 ITM logits of the candidates, one ``match_logits`` call per group (see :func:`rerank`).

    The indices are copied to the host once, so that grouping reads nothing back from the device."""
    num_rows, k = candidate_indices.shape
    device = candidate_indices.device
    host_candidates = candidate_indices.cpu()  # (c, k), the one read-back of the chunk
    if query_order is None:
        query_order = torch.arange(num_rows)
    elif not torch.equal(query_order.sort().values.cpu(), torch.arange(num_rows)):
        raise ValueError(f"query_order must be a permutation of the {num_rows} rows")
    query_order = query_order.cpu()
    candidate_logits = torch.zeros(num_rows, k, device=device)  # (c, k)
    for start in range(0, num_rows, batch_queries):
        rows = query_order[start:start + batch_queries]  # (n,) on the host
        logits = match_logits(rows + query_offset, host_candidates[rows])
        if tuple(logits.shape) != (rows.numel(), k):
            raise ValueError(f"match_logits returned shape {tuple(logits.shape)}, expected ({rows.numel()}, {k})")
        candidate_logits[rows.to(device, non_blocking=True)] = logits.to(device=device, dtype=torch.float32)
    return candidate_logits


def length_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rows (c,) ordered by caption length (stable), so that a group of queries is trimmed to similar lengths."""
    return torch.sort(attention_mask.sum(dim=1), stable=True).indices


def shared_itm_scorer(model, ids: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor,
                      device: torch.device, amp: str = "off") -> MatchLogits:
    """The ``match_logits`` of :func:`rerank` for a CADA model, sharing work between the pairs of a group.

    For the n queries x k candidates of one call, each distinct candidate image's cross-attention keys
    and values are projected once per layer and gathered for every pair (``image_index``), and the
    captions are trimmed to the group's longest (only the fused first token is read). The logits equal
    scoring every pair separately at full length, up to float rounding.

    Args:
        model: a CADA backbone in eval mode, on ``device``.
        ids: (Q, L) query ids whose first token is ``[ENC]``; mask: (Q, L); both on the host.
        image_tokens: (G, 1+N, D) gallery image tokens, on any device and in any dtype.
        amp: "off", "bf16" or "fp16": autocast of the fused pass (another value raises at the first call).
    """
    model_dtype = next(model.parameters()).dtype

    def match_logits(query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
        n, k = gallery_index.shape  # host indices: the group is assembled without reading the device
        distinct, pair_image = torch.unique(gallery_index.flatten(), return_inverse=True)  # (U,), (n*k,)
        tokens = image_tokens[distinct.to(image_tokens.device)].to(device, model_dtype)  # (U, 1+N, D)
        pair_ids, pair_mask = trim_to_longest(ids[query_index], mask[query_index])  # (n, L') on the host
        pair_ids = pair_ids.to(device, non_blocking=True).repeat_interleave(k, 0)  # (n*k, L')
        pair_mask = pair_mask.to(device, non_blocking=True).repeat_interleave(k, 0)
        with autocast(device, amp):
            logits = model.itm_match_logit(pair_ids, pair_mask, tokens, image_index=pair_image.to(device),
                                           length=pair_ids.shape[1])
        return logits.float().view(n, k)
    return match_logits
