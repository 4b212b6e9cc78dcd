"""The batched two-stage evaluation equals a slow, per-query implementation on a real (tiny) model."""
import pytest
import torch
from PIL import Image

from datasets.tokenization import build_tokenizer, encode
from datasets.transforms import build_image_transform
from engine.evaluator import evaluate
from models.cada import CADA
from models.registry import get_model_spec
from tests.helpers import make_set
from utils.config import EvalConfig
from utils.metrics import retrieval_metrics
from utils.vocab import ENC_ID

SIZE = (64, 32)


def slow_two_stage(model, dataset, tokenizer, transform, k):
    """Per query: cosine over the gallery, then its top-k re-scored one pair at a time."""
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in dataset.gallery_paths])
    image_embeds = model.encode_image(images)
    image_feats = model.image_features(image_embeds)
    global_scores, final_orders = [], []
    for text in dataset.query_texts:
        ids, mask = encode(tokenizer, [text], 73)
        cosine = (model.text_features(model.encode_text(ids, mask)) @ image_feats.t())[0]
        global_scores.append(cosine)
        order = sorted(range(len(cosine)), key=lambda g: (-cosine[g].item(), g))
        enc_ids = ids.clone()
        enc_ids[:, 0] = ENC_ID
        combined = {g: cosine[g].item() + model.itm_match_logit(enc_ids, mask, image_embeds[g:g + 1]).item()
                    for g in order[:k]}
        final_orders.append(sorted(order[:k], key=lambda g: (-combined[g], g)) + order[k:])
    return torch.stack(global_scores), final_orders


@torch.no_grad()
@pytest.mark.slow
def test_batched_two_stage_equals_per_query_reference(tmp_path):
    torch.manual_seed(0)
    model = CADA(get_model_spec("cada_tiny"), SIZE).eval()
    dataset, tokenizer = make_set(tmp_path), build_tokenizer()
    transform = build_image_transform(SIZE, train=False)
    k = 5
    options = EvalConfig(batch_size=5, k_test=k, chunk_size=7, rerank_batch_queries=3)
    results = evaluate(model, dataset, tokenizer, transform, options, torch.device("cpu"))

    global_scores, final_orders = slow_two_stage(model, dataset, tokenizer, transform, k)
    expected_global = retrieval_metrics(global_scores, dataset.query_pids, dataset.gallery_pids)
    for name, value in expected_global.items():
        assert abs(results["global"][name] - value) < 1e-6, name
    # the re-ranked order: score each gallery item by its position in the slow order
    position_scores = torch.zeros_like(global_scores)
    for q, order in enumerate(final_orders):
        position_scores[q, order] = -torch.arange(len(order), dtype=torch.float32)
    expected_reranked = retrieval_metrics(position_scores, dataset.query_pids, dataset.gallery_pids)
    for name, value in expected_reranked.items():
        assert abs(results["reranked"][name] - value) < 1e-6, name
    kept = results["reranked_per_query"]["top_indices"]
    assert kept.tolist() == [order[:10] for order in final_orders]
    assert results["chance_r1"] == 100 * 2 / 12
