"""Text-to-image retrieval metrics with identity-level positives, computed in bounded memory.

A gallery image is a positive for a text query when it shows the same person (same pid). Each query's
gallery is ranked by a stable descending sort of its scores: ties keep gallery order (lower index first).
With positives at 1-based ranks r_1 < ... < r_P:

    R@k  = 100 · mean_q 1[r_1 <= k]
    AP   = (1/P) Σ_j j / r_j                 (precision at each positive, over the full ranking)
    INP  = P / r_P                           (inverse negative penalty; mINP = mean INP)

Memory bound, for chunks of c queries against G gallery items: ``RetrievalMetrics.update`` needs, besides the
(c, G) score chunk, at most the sort's values and int64 order, then the order and two bool masks: ≈ 12·c·G bytes.
``iter_similarity_chunks`` keeps the fp32 normalised gallery (4·G·D) and yields (c, G) fp32 chunks, two alive at
once: ≈ 20·c·G + 4·G·D bytes in all, ≈ 170 + 19 MiB at G = 19,848, D = 256, c = 448 (``benchmarks/eval_memory.py``
measured a 210 MiB peak, against ≈ 12,900 MiB for the full matrix). c = 448 also keeps each chunk above glibc's
32 MiB mmap threshold at that G: smaller chunks fragmented the heap and peaked higher (266 MiB at c = 384).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 448


def _as_pid_vector(pids, name: str) -> torch.Tensor:
    pids = torch.as_tensor(pids)
    if pids.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(pids.shape)}")
    if pids.is_floating_point() or pids.is_complex() or pids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer person ids, got dtype {pids.dtype}")
    return pids


def count_positives(query_pids, gallery_pids) -> torch.Tensor:
    """(Q,) int64 counts, on the device of the (Q,) ``query_pids``, of the (G,) ``gallery_pids`` equal to each."""
    query_pids = _as_pid_vector(query_pids, "query_pids")
    gallery_pids = _as_pid_vector(gallery_pids, "gallery_pids").to(query_pids.device)
    unique_pids, pid_counts = torch.unique(gallery_pids, return_counts=True)  # sorted ascending
    if unique_pids.numel() == 0:
        return torch.zeros_like(query_pids, dtype=torch.long)
    slot = torch.searchsorted(unique_pids, query_pids).clamp(max=unique_pids.numel() - 1)  # (Q,)
    found = unique_pids[slot] == query_pids
    return torch.where(found, pid_counts[slot], torch.zeros_like(slot))


def chance_r1(query_pids, gallery_pids) -> float:
    """Expected R@1 (percent) of a uniformly random ranking: mean over queries of |positives| / G."""
    gallery_size = _as_pid_vector(gallery_pids, "gallery_pids").numel()
    if gallery_size == 0:
        raise ValueError("chance_r1: the gallery is empty")
    positives = count_positives(query_pids, gallery_pids).double()
    if positives.numel() == 0:
        raise ValueError("chance_r1: there are no queries")
    return 100.0 * positives.mean().item() / gallery_size


def iter_similarity_chunks(text_feats: torch.Tensor, image_feats: torch.Tensor,
                           chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[int, torch.Tensor]]:
    """Yields ``(start, scores)``: the (c, G) fp32 cosines of (Q, D) ``text_feats[start:start + c]`` against the
    (G, D) ``image_feats``, c = ``chunk_size``; normalised and multiplied in fp32 on ``image_feats``'s device."""
    if text_feats.dim() != 2 or image_feats.dim() != 2 or text_feats.shape[1] != image_feats.shape[1]:
        raise ValueError(f"expected text_feats (Q, D) and image_feats (G, D) with equal D, got "
                         f"{tuple(text_feats.shape)} and {tuple(image_feats.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    gallery = F.normalize(image_feats.float(), dim=-1)  # (G, D)
    for start in range(0, text_feats.shape[0], chunk_size):
        queries = F.normalize(text_feats[start : start + chunk_size].to(gallery.device).float(), dim=-1)  # (c, D)
        yield start, queries @ gallery.T  # (c, G)


class RetrievalMetrics:
    """Accumulates R@k (k in ``ks``), mAP and mINP over chunks of queries; equations in the module docstring."""

    def __init__(self, ks: Sequence[int] = (1, 5, 10)):
        if not ks or any(int(k) != k or k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks!r}")
        self.ks = tuple(int(k) for k in ks)
        self.num_queries = 0
        self._first_ranks: list[torch.Tensor] = []
        self._average_precisions: list[torch.Tensor] = []
        self._inverse_negative_penalties: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, scores: torch.Tensor, query_pids, gallery_pids) -> None:
        """Adds a chunk: (c, G) ``scores`` (higher is more similar) of the (c,) ``query_pids`` against the whole
        (G,) ``gallery_pids``. ValueError on mismatched shapes, NaN scores, or a query with no positive."""
        query_pids = _as_pid_vector(query_pids, "query_pids").to(scores.device)
        gallery_pids = _as_pid_vector(gallery_pids, "gallery_pids").to(scores.device)
        if scores.dim() != 2 or scores.shape != (query_pids.numel(), gallery_pids.numel()):
            raise ValueError(f"scores must be (c, G) = ({query_pids.numel()}, {gallery_pids.numel()}) to match the "
                             f"pids, got {tuple(scores.shape)}")
        if scores.numel() and scores.aminmax().max.isnan():  # aminmax propagates NaN without a (c, G) mask
            raise ValueError(f"scores of queries {self.num_queries}..{self.num_queries + len(query_pids) - 1} hold NaN")
        chunk_size = scores.shape[0]

        ranked_gallery = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (c, G) int64
        matches = gallery_pids.unsqueeze(0) == query_pids.unsqueeze(1)  # (c, G) bool, gallery order
        ranked_matches = matches.gather(1, ranked_gallery)  # (c, G) bool, ranked order
        del ranked_gallery, matches

        # Positives as (row, 0-based rank) pairs; nonzero lists them row by row, ranks ascending.
        rows, ranks0 = ranked_matches.nonzero(as_tuple=True)  # (N,), (N,)
        del ranked_matches
        positives_per_query = torch.bincount(rows, minlength=chunk_size)  # (c,)
        missing = (positives_per_query == 0).nonzero(as_tuple=True)[0]
        if missing.numel():
            shown = (missing[:5] + self.num_queries).tolist()
            raise ValueError(f"{missing.numel()} of {chunk_size} queries have no positive in the gallery (no gallery "
                             f"image with their person id), e.g. queries {shown}; evaluation would be undefined "
                             "for them")
        first_slot = torch.cumsum(positives_per_query, 0) - positives_per_query  # (c,) index of each row's first hit
        ordinal = torch.arange(rows.numel(), device=rows.device) - first_slot[rows] + 1  # (N,) j = 1..P per row
        ranks = (ranks0 + 1).double()  # (N,) 1-based r_j
        precision_sum = torch.zeros(chunk_size, dtype=torch.float64, device=scores.device)
        precision_sum.index_add_(0, rows, ordinal.double() / ranks)
        last_rank = ranks[first_slot + positives_per_query - 1]  # (c,)

        self._first_ranks.append((ranks0[first_slot] + 1).cpu())
        self._average_precisions.append((precision_sum / positives_per_query).cpu())
        self._inverse_negative_penalties.append((positives_per_query / last_rank).cpu())
        self.num_queries += chunk_size

    def per_query(self) -> dict[str, torch.Tensor]:
        """Per-query results in update order: ``first_positive_rank`` (1-based int64), ``average_precision``
        and ``inverse_negative_penalty`` (fractions, float64)."""
        if not self.num_queries:
            raise ValueError("RetrievalMetrics: no queries were added (call update first)")
        return {"first_positive_rank": torch.cat(self._first_ranks),
                "average_precision": torch.cat(self._average_precisions),
                "inverse_negative_penalty": torch.cat(self._inverse_negative_penalties)}

    @property
    def first_positive_rank(self) -> torch.Tensor:
        """(Q,) 1-based rank of each query's first positive, in update order."""
        return self.per_query()["first_positive_rank"]

    def compute(self) -> dict[str, float]:
        """Returns ``{'R1', 'R5', 'R10', 'mAP', 'mINP'}`` (keys follow ``ks``) in percent."""
        return summarize(self.per_query(), self.ks)


def summarize(per_query: dict[str, torch.Tensor], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k, mAP and mINP (percent) from ``RetrievalMetrics.per_query()`` results (e.g. merged over ranks)."""
    first_ranks = per_query["first_positive_rank"]
    metrics = {f"R{k}": 100.0 * (first_ranks <= k).double().mean().item() for k in ks}
    metrics["mAP"] = 100.0 * per_query["average_precision"].mean().item()
    metrics["mINP"] = 100.0 * per_query["inverse_negative_penalty"].mean().item()
    return metrics


def retrieval_metrics(scores: torch.Tensor, query_pids, gallery_pids, ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """R@k, mAP and mINP (percent) of a full (Q, G) score matrix of (Q,) ``query_pids`` against (G,)
    ``gallery_pids``, ``chunk_size`` queries at a time (bounds the extra memory, see the module docstring).
    ValueError, giving how many, when any query has no positive in the gallery."""
    query_pids = _as_pid_vector(query_pids, "query_pids")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    missing = int((count_positives(query_pids, gallery_pids) == 0).sum())
    if missing:
        raise ValueError(f"{missing} of {query_pids.numel()} queries have no positive in the gallery")
    accumulator = RetrievalMetrics(ks)
    for start in range(0, scores.shape[0], chunk_size):
        accumulator.update(scores[start : start + chunk_size], query_pids[start : start + chunk_size], gallery_pids)
    return accumulator.compute()
