"""Text-to-image evaluation: encode gallery and queries, score in query chunks, re-rank, measure.

Stage 1 ranks the gallery by cosine similarity of projected [CLS] features; stage 2 re-scores each
query's top ``k_test`` images with the fused encoder's ITM logit (method.md §4). Queries are sharded over
ranks under torchrun; the gallery is encoded once (sharded) and gathered.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.person_search import GalleryImages, RetrievalSet
from datasets.tokenization import encode
from engine.rerank import length_order, rerank, shared_itm_scorer
from models.padding import trim_to_longest
from utils.config_schema import EvalConfig
from utils.dist import all_gather_uneven, get_rank, get_world_size, is_main_process
from utils.metrics import RetrievalMetrics, chance_r1, iter_similarity_chunks, summarize
from utils.precision import autocast
from utils.vocab import ENC_ID, MAX_TEXT_LEN

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KEEP_TOP = 10  # top gallery indices kept per query (pictures, error analysis)


def shard_bounds(total: int, world: int) -> list[int]:
    """Contiguous, near-equal shards: rank r owns items ``bounds[r]:bounds[r + 1]``."""
    return [total * r // world for r in range(world + 1)]


@torch.no_grad()
def encode_gallery(model, paths, transform, settings: EvalConfig, device: torch.device, num_workers: int):
    """Returns L2-normalised features (G, 256) and, when re-ranking, image tokens (G, 1+N, D).

    Under torchrun each rank encodes its shard of the gallery and the shards are gathered once.
    """
    tokens_device = device if settings.image_tokens_device == "auto" else torch.device(settings.image_tokens_device)
    bounds = shard_bounds(len(paths), get_world_size())
    local_paths = list(paths)[bounds[get_rank()]:bounds[get_rank() + 1]]
    loader = DataLoader(GalleryImages(local_paths, transform), batch_size=settings.batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG alone (exact resume)
    batches = tqdm(loader, desc="gallery", disable=not is_main_process(), leave=False)
    tokens_dtype = DTYPES[settings.image_tokens_dtype] if settings.rerank else None  # tokens only to re-rank
    features, tokens = encode_images(model, batches, device, settings.amp, tokens_dtype, tokens_device)
    # gathered as tensors (the tokens of a 20k-image gallery are ~12 GB in fp32: never pickled)
    return all_gather_uneven(features).to(device), None if tokens is None else all_gather_uneven(tokens)


@torch.no_grad()
def encode_images(model, batches: Iterable[torch.Tensor], device: torch.device, amp: str,
                  tokens_dtype: torch.dtype | None,
                  tokens_device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gallery-encoding loop, shared by evaluation and the folder index (:mod:`engine.folder_index`).

    Returns ``(features, tokens)``: (G, E) fp32 L2-normalised features on the CPU and (G, 1+N, D) image tokens
    (None when ``tokens_dtype`` is None); empty tensors when there is no batch.

    Args:
        model: a CADA model in eval mode, on ``device``.
        batches: (b, 3, H, W) image batches.
        amp: autocast of the image encoder: ``off``, ``bf16`` or ``fp16``.
        tokens_dtype: dtype the image tokens are kept in (for re-ranking); None keeps none.
        tokens_device: where the image tokens are kept.
    """
    features, tokens = [], []
    for images in batches:
        with autocast(device, amp):
            embeds = model.encode_image(images.to(device, non_blocking=True))  # (b, 1+N, D)
            features.append(model.image_features(embeds).float().cpu())  # (b, E)
        if tokens_dtype is not None:
            tokens.append(embeds.to(tokens_device, tokens_dtype))
    if not features:
        return torch.empty(0), None if tokens_dtype is None else torch.empty(0)
    return torch.cat(features), None if tokens_dtype is None else torch.cat(tokens)


@torch.no_grad()
def encode_queries(model, tokenizer, texts: list[str], max_text_len: int, batch_size: int, device: torch.device,
                   amp: str):
    """Returns L2-normalised features (Q, 256) and the token ids and masks (Q, L).

    Each batch is trimmed to its longest caption and its last layer computes [CLS] alone (only [CLS] is read;
    exact, see docs/method.md).
    """
    ids, mask = encode(tokenizer, texts, max_text_len)
    features = []
    for i in range(0, len(texts), batch_size):
        batch_ids, batch_mask = trim_to_longest(ids[i:i + batch_size], mask[i:i + batch_size])  # on the CPU copy
        with autocast(device, amp):
            features.append(model.text_features(model.encode_text(batch_ids.to(device), batch_mask.to(device),
                                                                    first_token_only=True)).float())
    return torch.cat(features), ids, mask


@torch.no_grad()
def evaluate(model, dataset: RetrievalSet, tokenizer, transform, settings: EvalConfig, device: torch.device,
             max_text_len: int = MAX_TEXT_LEN, num_workers: int = 2) -> dict:
    """Both stages' R1/R5/R10/mAP/mINP (percent), the chance R1 and per-query first-positive ranks.

    Args:
        settings: the config's ``eval`` section.
        max_text_len: the model's text length (``model.max_text_len``).
        num_workers: gallery loader workers (``data.num_workers``).
    """
    model.eval()
    image_feats, image_tokens = encode_gallery(model, dataset.gallery_paths, transform, settings, device, num_workers)
    # this rank's queries: a contiguous shard, so gathered results keep query order
    rank, world = get_rank(), get_world_size()
    bounds = shard_bounds(len(dataset.query_texts), world)
    texts = dataset.query_texts[bounds[rank]:bounds[rank + 1]]
    query_pids = dataset.query_pids[bounds[rank]:bounds[rank + 1]]
    text_feats, ids, mask = encode_queries(model, tokenizer, texts, max_text_len, settings.batch_size, device,
                                           settings.amp)
    ids[:, 0] = ENC_ID  # the fused pass starts with [ENC]
    gallery_pids = dataset.gallery_pids
    match_logits = (shared_itm_scorer(model, ids, mask, image_tokens, device, settings.amp)
                    if settings.rerank else None)
    stages = {"global": RetrievalMetrics()}
    if settings.rerank:
        stages["reranked"] = RetrievalMetrics()
    shown = {name: [] for name in stages}  # per chunk: top-n gallery indices and their scores

    for start, scores in iter_similarity_chunks(text_feats, image_feats, settings.chunk_size):
        chunk_pids = query_pids[start:start + scores.shape[0]]
        stages["global"].update(scores, chunk_pids, gallery_pids)
        shown["global"].append(top_n(scores, scores, KEEP_TOP))
        if settings.rerank:
            reranked = rerank(scores, settings.k_test, match_logits, query_offset=start,
                              batch_queries=settings.rerank_batch_queries,
                              query_order=length_order(mask[start:start + scores.shape[0]]))
            stages["reranked"].update(reranked.scores, chunk_pids, gallery_pids)
            combined = scores.scatter_add(1, reranked.candidate_indices, reranked.candidate_logits)  # cos + logit
            shown["reranked"].append(top_n(reranked.scores, combined, KEEP_TOP))
        del scores

    results = {"chance_r1": chance_r1(dataset.query_pids, gallery_pids), "num_queries": len(dataset.query_texts),
               "num_gallery": len(dataset.gallery_paths)}
    for name, metrics in stages.items():
        local = {**metrics.per_query(), "top_indices": torch.cat([i for i, _ in shown[name]]),
                 "top_scores": torch.cat([v for _, v in shown[name]])}
        per_query = {key: all_gather_uneven(value) for key, value in local.items()}  # rank order = query order
        results[name] = summarize(per_query)
        results[name + "_per_query"] = per_query
    if settings.image_to_text:
        results["image_to_text"] = image_to_text_metrics(image_feats, text_feats, dataset, settings.chunk_size)
    return results


def top_n(ranking_keys: torch.Tensor, display_scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` gallery indices of each row's final ranking (c, n) and their display scores (c, n)."""
    order = torch.sort(ranking_keys, dim=1, descending=True, stable=True).indices[:, :n]
    return order.cpu(), display_scores.gather(1, order).cpu()


def image_to_text_metrics(image_feats, text_feats, dataset: RetrievalSet, chunk_size: int) -> dict:
    """Image-to-text direction (global stage): each gallery image ranks all captions; positives share the pid."""
    all_text_feats = all_gather_uneven(text_feats).to(image_feats.device)
    metrics = RetrievalMetrics()
    for start, scores in iter_similarity_chunks(image_feats, all_text_feats, chunk_size):
        metrics.update(scores, dataset.gallery_pids[start:start + scores.shape[0]], dataset.query_pids)
    return metrics.compute()
