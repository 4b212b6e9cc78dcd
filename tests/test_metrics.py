"""Retrieval metrics: a hand-computed example, a brute-force reference with ties, chunking, and errors."""
import math

import pytest
import torch

from utils.metrics import (
    RetrievalMetrics,
    chance_r1,
    count_positives,
    iter_similarity_chunks,
    retrieval_metrics,
)

# 4 queries x 6 gallery images; gallery pids [1, 1, 2, 2, 3, 4]; ties keep gallery order.
#   q0 pid 1: order g0 g2 g3 g4 g1 g5      positives at ranks 1, 5  AP = (1/1 + 2/5)/2 = 21/30  INP = 2/5
#   q1 pid 2: 0.5 ties g0 g1 g2 g5, then g3 g4  -> positives g2 at 3, g3 at 5
#                                                               AP = (1/3 + 2/5)/2 = 11/30  INP = 2/5
#   q2 pid 3: order g5 g4 ...               positive at rank 2      AP = 1/2 = 15/30        INP = 1/2
#   q3 pid 4: all tied, gallery order       positive at rank 6      AP = 1/6 = 5/30         INP = 1/6
# First-positive ranks 1, 3, 2, 6: R1 = 25, R5 = 75, R10 = 100.
# mAP = (21 + 11 + 15 + 5)/30/4 = 52/120 = 43.333...%;  mINP = (12 + 12 + 15 + 5)/30/4 = 44/120 = 36.666...%.
# Reversing the tie rule would put q1's first positive at rank 2 and q3's at rank 1.
HAND_SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.3, 0.2, 0.0],
        [0.5, 0.5, 0.5, 0.2, 0.1, 0.5],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
    ]
)
HAND_QUERY_PIDS = torch.tensor([1, 2, 3, 4])
HAND_GALLERY_PIDS = torch.tensor([1, 1, 2, 2, 3, 4])


def brute_force_metrics(scores, query_pids, gallery_pids, ks):
    """Per-query Python loops over an explicitly sorted ranking; returns (metrics dict, first ranks)."""
    rows, gallery_pids, query_pids = scores.tolist(), gallery_pids.tolist(), query_pids.tolist()
    hits_at = {k: 0 for k in ks}
    ap_total = inp_total = 0.0
    first_ranks = []
    for row, pid in zip(rows, query_pids):
        ranking = sorted(range(len(row)), key=lambda g: (-row[g], g))
        positive_ranks = [rank for rank, g in enumerate(ranking, start=1) if gallery_pids[g] == pid]
        first_ranks.append(positive_ranks[0])
        for k in ks:
            hits_at[k] += positive_ranks[0] <= k
        ap_total += sum((j + 1) / rank for j, rank in enumerate(positive_ranks)) / len(positive_ranks)
        inp_total += len(positive_ranks) / positive_ranks[-1]
    n = len(rows)
    metrics = {f"R{k}": 100.0 * hits_at[k] / n for k in ks}
    metrics.update(mAP=100.0 * ap_total / n, mINP=100.0 * inp_total / n)
    return metrics, first_ranks


def assert_metrics_equal(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_hand_computed_example(chunk_size):
    got = retrieval_metrics(HAND_SCORES, HAND_QUERY_PIDS, HAND_GALLERY_PIDS, chunk_size=chunk_size)
    expected = {"R1": 25.0, "R5": 75.0, "R10": 100.0, "mAP": 100 * 52 / 120, "mINP": 100 * 44 / 120}
    assert_metrics_equal(got, expected)


def test_first_positive_rank_and_per_query_values():
    accumulator = RetrievalMetrics(ks=(1, 2))
    accumulator.update(HAND_SCORES[:3], HAND_QUERY_PIDS[:3], HAND_GALLERY_PIDS)
    accumulator.update(HAND_SCORES[3:], HAND_QUERY_PIDS[3:], HAND_GALLERY_PIDS)
    assert accumulator.compute()["R2"] == 50.0
    assert accumulator.first_positive_rank.tolist() == [1, 3, 2, 6]
    per_query = accumulator.per_query()
    assert per_query["average_precision"].tolist() == pytest.approx([21 / 30, 11 / 30, 1 / 2, 1 / 6])
    assert per_query["inverse_negative_penalty"].tolist() == pytest.approx([2 / 5, 2 / 5, 1 / 2, 1 / 6])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties_across_chunk_sizes(seed):
    generator = torch.Generator().manual_seed(seed)
    num_queries, gallery_size, num_ids = 23, 40, 6
    gallery_pids = torch.randint(0, num_ids, (gallery_size,), generator=generator)
    gallery_pids[:num_ids] = torch.arange(num_ids)  # every id present, most several times
    query_pids = torch.randint(0, num_ids, (num_queries,), generator=generator)
    scores = torch.randint(-3, 4, (num_queries, gallery_size), generator=generator).float()  # many ties
    ks = (1, 3, 5, 10)
    expected, expected_first_ranks = brute_force_metrics(scores, query_pids, gallery_pids, ks)
    for chunk_size in (1, 3, num_queries):
        assert_metrics_equal(retrieval_metrics(scores, query_pids, gallery_pids, ks, chunk_size), expected)
    accumulator = RetrievalMetrics(ks)
    for start, stop in ((0, 7), (7, 8), (8, num_queries)):
        accumulator.update(scores[start:stop], query_pids[start:stop], gallery_pids)
    assert_metrics_equal(accumulator.compute(), expected)
    assert accumulator.first_positive_rank.tolist() == expected_first_ranks


def test_chance_r1_by_hand():
    # positives per query: 2, 2, 1, 1 out of G = 6 -> mean 6/24 = 25%
    assert chance_r1(HAND_QUERY_PIDS, HAND_GALLERY_PIDS) == pytest.approx(25.0)
    # pid 9 is absent (0 positives): (2 + 0) / 6 / 2 = 1/6
    assert chance_r1([1, 9], HAND_GALLERY_PIDS) == pytest.approx(100 / 6)
    assert count_positives(torch.tensor([4, 1, 9, 2]), HAND_GALLERY_PIDS).tolist() == [1, 2, 0, 2]


def test_query_without_positive_raises_with_count():
    query_pids = torch.tensor([1, 7, 8, 4])  # 7 and 8 are not in the gallery
    with pytest.raises(ValueError, match="2 of 4 queries have no positive"):
        retrieval_metrics(HAND_SCORES, query_pids, HAND_GALLERY_PIDS)
    accumulator = RetrievalMetrics()
    accumulator.update(HAND_SCORES[:1], query_pids[:1], HAND_GALLERY_PIDS)
    with pytest.raises(ValueError, match=r"1 of 1 queries .* queries \[1\]"):
        accumulator.update(HAND_SCORES[1:2], query_pids[1:2], HAND_GALLERY_PIDS)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="scores must be"):
        retrieval_metrics(HAND_SCORES[:, :5], HAND_QUERY_PIDS, HAND_GALLERY_PIDS)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(HAND_SCORES.clone().fill_(math.nan), HAND_QUERY_PIDS, HAND_GALLERY_PIDS)
    with pytest.raises(ValueError, match="integer person ids"):
        retrieval_metrics(HAND_SCORES, HAND_QUERY_PIDS.float(), HAND_GALLERY_PIDS)
    with pytest.raises(ValueError, match="no queries"):
        RetrievalMetrics().compute()


def test_similarity_chunks_are_fp32_cosines_of_low_precision_features():
    generator = torch.Generator().manual_seed(0)
    text = (torch.randn(7, 16, generator=generator) * 3).to(torch.bfloat16)
    image = torch.randn(5, 16, generator=generator).to(torch.float16)
    chunks = list(iter_similarity_chunks(text, image, chunk_size=3))
    assert [start for start, _ in chunks] == [0, 3, 6]
    assert all(chunk.dtype == torch.float32 for _, chunk in chunks)
    full = torch.cat([chunk for _, chunk in chunks])
    expected = torch.nn.functional.cosine_similarity(text.double()[:, None], image.double()[None], dim=-1)
    torch.testing.assert_close(full.double(), expected, rtol=0, atol=1e-6)
