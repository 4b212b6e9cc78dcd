"""Second-stage re-ranking: exact order against a per-query reference, batching of the ITM calls, edge cases."""
import pytest
import torch

from engine.rerank import rerank, topk_candidates


def stable_ranking(row):
    """Gallery indices by descending score, ties to the lower index (the metrics' order)."""
    return sorted(range(len(row)), key=lambda g: (-row[g], g))


def reference_ranking(cosines, logit_table, query_index, k):
    """Slow per-query reference: top-k by cosine re-sorted by cos + logit, then the rest by cosine."""
    ranking = stable_ranking(cosines)
    top, rest = ranking[:k], ranking[k:]
    combined = {g: cosines[g] + logit_table[query_index][g] for g in top}
    return sorted(top, key=lambda g: (-combined[g], g)) + rest


class RecordingLogits:
    """``match_logits`` looking logits up in a (Q, G) table and recording each call's batch size."""

    def __init__(self, table):
        self.table = table
        self.batch_sizes = []
        self.query_indices = []

    def __call__(self, query_index, gallery_index):
        assert query_index.dtype == torch.long and gallery_index.dtype == torch.long
        self.batch_sizes.append(query_index.numel())
        self.query_indices.extend(query_index.tolist())
        return self.table[query_index.unsqueeze(1), gallery_index]  # (n, k)


def make_problem(seed, num_queries=11, gallery_size=17, offset=5):
    generator = torch.Generator().manual_seed(seed)
    cosines = torch.randint(-4, 5, (num_queries, gallery_size), generator=generator).float() / 4  # many ties
    logit_table = torch.randint(-2, 3, (offset + num_queries, gallery_size), generator=generator).float() / 4
    return cosines, logit_table


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 4, 16, 17, 30])
def test_order_matches_per_query_reference(seed, k):
    offset = 5
    cosines, logit_table = make_problem(seed, offset=offset)
    result = rerank(cosines, k, RecordingLogits(logit_table), query_offset=offset, batch_queries=4)
    table_rows = logit_table.tolist()
    for row, (cos_row, out_row) in enumerate(zip(cosines.tolist(), result.scores.tolist())):
        expected = reference_ranking(cos_row, table_rows, offset + row, k)
        assert stable_ranking(out_row) == expected
    k_used = min(k, cosines.shape[1])
    assert result.candidate_indices.shape == result.candidate_logits.shape == (cosines.shape[0], k_used)
    expected_logits = logit_table[offset:][torch.arange(cosines.shape[0])[:, None], result.candidate_indices]
    assert torch.equal(result.candidate_logits, expected_logits)


def test_match_logits_called_in_batches_with_global_query_indices():
    cosines, logit_table = make_problem(0, num_queries=11, offset=5)
    recorder = RecordingLogits(logit_table)
    rerank(cosines, 4, recorder, query_offset=5, batch_queries=4)
    assert recorder.batch_sizes == [4, 4, 3]
    assert recorder.query_indices == list(range(5, 16))
    recorder = RecordingLogits(logit_table)
    rerank(cosines, 4, recorder, query_offset=5, batch_queries=64)
    assert recorder.batch_sizes == [11]


def test_query_order_groups_rows_and_leaves_the_result_unchanged():
    cosines, logit_table = make_problem(1, num_queries=11, offset=5)
    plain = rerank(cosines, 4, RecordingLogits(logit_table), query_offset=5, batch_queries=4)
    order = torch.tensor([3, 9, 0, 10, 1, 2, 8, 4, 7, 6, 5])
    recorder = RecordingLogits(logit_table)
    grouped = rerank(cosines, 4, recorder, query_offset=5, batch_queries=4, query_order=order)
    assert recorder.query_indices == (order + 5).tolist() and recorder.batch_sizes == [4, 4, 3]
    assert torch.equal(grouped.scores, plain.scores)
    assert torch.equal(grouped.candidate_logits, plain.candidate_logits)
    with pytest.raises(ValueError, match="permutation"):
        rerank(cosines, 4, recorder, query_order=torch.zeros(11, dtype=torch.long))


def test_order_inside_top_k_is_exact_for_nearly_equal_combined_scores():
    # cos + logit differ by one fp32 ulp of the logit (~1e-6); adding an offset in fp32 would merge them and
    # fall back to gallery order (index 0 first). The larger combined score must win.
    cosines = torch.tensor([[0.5, 0.5, 0.1]])
    logits = torch.tensor([[10.0, torch.nextafter(torch.tensor(10.0), torch.tensor(11.0)).item(), 0.0]])
    result = rerank(cosines, 2, lambda q, g: logits[q.unsqueeze(1), g])
    assert stable_ranking(result.scores[0].tolist()) == [1, 0, 2]


def test_topk_candidates_is_stable_on_ties():
    scores = torch.tensor([[0.2, 0.9, 0.2, 0.2, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    values, indices = topk_candidates(scores, 3)
    assert indices.tolist() == [[1, 4, 0], [0, 1, 2]]
    assert torch.equal(values, torch.tensor([[0.9, 0.5, 0.2], [1.0, 1.0, 1.0]]))
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (20, 50), generator=generator).float()
    for k in (1, 7, 50, 80):
        _, indices = topk_candidates(scores, k)
        assert indices.tolist() == [stable_ranking(row)[:k] for row in scores.tolist()]


def test_bad_inputs_raise():
    cosines, logit_table = make_problem(0)
    with pytest.raises(ValueError, match="match_logits returned shape"):
        rerank(cosines, 3, lambda q, g: torch.zeros(q.numel(), 2))
    with pytest.raises(ValueError, match="finite"):
        rerank(torch.full((2, 3), float("inf")), 2, RecordingLogits(logit_table))
    with pytest.raises(ValueError, match="k must be"):
        topk_candidates(cosines, 0)
    with pytest.raises(ValueError, match="NaN"):
        topk_candidates(torch.tensor([[0.1, float("nan"), 0.3]]), 2)


@pytest.mark.slow
@torch.no_grad()
def test_shared_itm_scorer_equals_pair_by_pair_full_length_scores():
    from engine.rerank import length_order, shared_itm_scorer
    from models.cada_backbone import CADABackbone
    from models.registry import get_model_spec
    torch.manual_seed(0)
    model = CADABackbone(get_model_spec("cada_tiny"), (32, 16)).eval()
    generator = torch.Generator().manual_seed(5)
    lengths = [4, 11, 7, 2, 9, 6]
    ids = torch.zeros(6, 73, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1000, 2000, (length,), generator=generator)
        mask[row, :length] = 1
    image_tokens = model.encode_image(torch.randn(9, 3, 32, 16, generator=generator))  # (9, 1+N, D)
    cosines = torch.rand(6, 9, generator=generator)

    def pair_by_pair(query_index, gallery_index):  # today's slow path: one full-length pass per pair
        return torch.stack([torch.stack([model.itm_head(model.fuse(ids[q:q + 1], mask[q:q + 1],
                                                                   image_tokens[g:g + 1])[:, 0])[0, 1]
                                         for g in row.tolist()])
                            for q, row in zip(query_index.tolist(), gallery_index)])

    slow = rerank(cosines, 4, pair_by_pair)
    scorer = shared_itm_scorer(model, ids, mask, image_tokens, torch.device("cpu"))
    fast = rerank(cosines, 4, scorer, batch_queries=4, query_order=length_order(mask))
    assert length_order(mask).tolist() == [3, 0, 5, 2, 4, 1]
    torch.testing.assert_close(fast.candidate_logits, slow.candidate_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.scores.argsort(dim=1, descending=True, stable=True),
                       slow.scores.argsort(dim=1, descending=True, stable=True))
    bf16 = rerank(cosines, 4, shared_itm_scorer(model, ids, mask, image_tokens, torch.device("cpu"), amp="bf16"))
    torch.testing.assert_close(bf16.candidate_logits, slow.candidate_logits, atol=0.1, rtol=0.05)


def test_rerank_reads_the_device_a_fixed_number_of_times_per_chunk_however_many_groups():
    from engine.rerank import length_order, shared_itm_scorer
    from models.cada_backbone import CADABackbone
    from models.registry import get_model_spec
    from tests.helpers import OnDevice
    torch.manual_seed(0)
    model = CADABackbone(get_model_spec("cada_tiny"), (32, 16)).eval()
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(1000, 2000, (12, 20), generator=generator)
    mask = (torch.arange(20) < torch.randint(3, 20, (12, 1), generator=generator)).long()
    with torch.no_grad():
        image_tokens = model.encode_image(torch.randn(9, 3, 32, 16, generator=generator)).as_subclass(OnDevice)
    cosines = torch.rand(12, 9, generator=generator).as_subclass(OnDevice)
    reads = []
    for batch_queries in (12, 4, 1):  # 1, 3 and 12 groups
        OnDevice.reads = 0
        rerank(cosines, 4, shared_itm_scorer(model, ids, mask, image_tokens, torch.device("cpu")),
               batch_queries=batch_queries, query_order=length_order(mask))
        reads.append(OnDevice.reads)
    assert reads[0] == reads[1] == reads[2]
