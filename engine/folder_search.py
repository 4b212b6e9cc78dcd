"""Text search over a folder of photos with a trained model (the job behind ``retrieve.py``).

The folder is indexed once per model (:mod:`engine.folder_index`); each query is cleaned like training
captions and ranked with the two stages of evaluation: cosine similarity over the whole folder, then the
top ``eval.k_test`` images re-ranked by  s = cos + ITM match logit  (:func:`engine.rerank.rerank`). Shown
scores are that sum for the re-ranked images and the cosine below them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.images import load_rgb
from datasets.records import clean_caption, read_utf8
from engine import builders
from engine.evaluation_run import resolve_config
from engine.evaluator import encode_queries, top_n
from engine.explain import Explainer, explain_search
from engine.folder_index import FolderIndex, GalleryError, index_folder, index_key
from engine.rerank import length_order, rerank, shared_itm_scorer
from engine.results import file_hash
from engine.visualize import draw_query_row, save_pages
from utils.errors import DataError
from utils.metrics import iter_similarity_chunks
from utils.vocab import ENC_ID, MAX_TEXT_LEN

log = logging.getLogger(__name__)

CHECKPOINT_HASH_LENGTH = 16


@dataclass
class QueryResult:
    """The ranked images of one query.

    Attributes:
        query: the text as given.
        gallery_indices: (n,) rows of the :class:`FolderIndex`, best first.
        scores: (n,) display scores (cos + ITM logit for the first ``reranked``, cosine after).
        reranked: how many leading images were re-ranked with the ITM logit.
    """

    query: str
    gallery_indices: torch.Tensor
    scores: torch.Tensor
    reranked: int


def load_search_model(checkpoint: str | Path, config_path: str | None = None, device: str | torch.device = "cpu"):
    """Returns ``(model in eval mode, config)``, built from ``config_path`` or the checkpoint's config, loaded strictly.

    Args:
        checkpoint: our checkpoint (carries its config), or a BLIP/CADA release with ``config_path``.
        config_path: YAML config for checkpoints without one.

    Raises:
        models.checkpoint_import.CheckpointMismatchError: the weights do not fit the configured architecture.
    """
    config, content = resolve_config(checkpoint, config_path, [])
    model = builders.build_model(config, weights=checkpoint, checkpoint=content)
    return model.to(device).eval(), config


def clean_queries(queries: Sequence[str]) -> list[str]:
    """The queries cleaned like training captions; raises if there are none or one is empty after cleaning."""
    texts = [clean_caption(query) for query in queries]
    empty = [query for query, text in zip(queries, texts) if not text]
    if not queries or empty:
        raise DataError(f"queries must be non-empty descriptions, got {list(queries) if not queries else empty}")
    return texts


@torch.no_grad()
def search(model, index: FolderIndex, tokenizer, queries: Sequence[str], topk: int = 10, k_test: int = 16,
           use_rerank: bool = True, max_text_len: int = MAX_TEXT_LEN, device: str | torch.device = "cpu",
           batch_size: int = 64, amp: str = "off") -> list[QueryResult]:
    """Ranks the indexed images for each query.

    Args:
        model: the model that built ``index`` (eval mode, on ``device``).
        tokenizer: from :func:`datasets.tokenization.build_tokenizer`.
        topk: images returned per query (at most the folder's size).
        k_test: images re-ranked with the ITM logit.
        use_rerank: whether to run the second stage.
        batch_size: queries per text-encoder pass and per ITM batch.
        amp: autocast of the query and ITM passes: ``off``, ``bf16`` or ``fp16`` (``eval.amp``).
    """
    texts = clean_queries(queries)
    # (Q, E) features, (Q, L) ids and mask
    text_feats, ids, mask = encode_queries(model, tokenizer, texts, max_text_len, batch_size, device, amp)
    ids[:, 0] = ENC_ID  # the fused pass starts with [ENC]
    match_logits = shared_itm_scorer(model, ids, mask, index.image_tokens, device, amp)

    results = []
    for start, scores in iter_similarity_chunks(text_feats, index.features.to(device), batch_size):  # (c, G)
        if use_rerank:
            reranked = rerank(scores, k_test, match_logits, query_offset=start, batch_queries=batch_size,
                              query_order=length_order(mask[start:start + scores.shape[0]]))
            combined = scores.scatter_add(1, reranked.candidate_indices, reranked.candidate_logits)  # cos + logit
            shown, shown_scores = top_n(reranked.scores, combined, topk)
        else:
            shown, shown_scores = top_n(scores, scores, topk)
        for row in range(scores.shape[0]):
            results.append(QueryResult(queries[start + row], shown[row], shown_scores[row],
                                       min(k_test, len(index)) if use_rerank else 0))
    return results


def format_results(results: Sequence[QueryResult], index: FolderIndex) -> str:
    """A plain-text table per query: rank, score and the image path relative to the folder."""
    blocks = []
    for number, result in enumerate(results, start=1):
        lines = [f"query {number}: {result.query}", f"{'rank':>4}  {'score':>8}  image"]
        for rank, (g, score) in enumerate(zip(result.gallery_indices.tolist(), result.scores.tolist()), start=1):
            lines.append(f"{rank:>4}  {score:>8.3f}  {index.files[g]}")
        blocks.append("\n".join(lines))
    legend = (f"score: cosine + ITM match logit for the top {results[0].reranked}, cosine below"
              if results and results[0].reranked else "score: cosine similarity")
    return "\n\n".join(blocks) + f"\n\n{legend} ({len(index)} images in {index.folder})"


def draw_results(results: Sequence[QueryResult], index: FolderIndex, path: str | Path) -> list[Path]:
    """PNG grid(s): each query's text above its ranked images with their scores (no ground truth, grey frames)."""
    slots = max(result.gallery_indices.numel() for result in results)
    rows = [draw_query_row(f"query {number} | {len(index)} images", result.query,
                           [load_rgb(index.paths[g]) for g in result.gallery_indices.tolist()],
                           result.scores.tolist(), slots=slots)
            for number, result in enumerate(results, start=1)]
    return save_pages(rows, path)


def read_queries_file(path: str | Path) -> list[str]:
    """One query per non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"queries file not found: {path}")
    queries = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
    if not queries:
        raise DataError(f"{path} holds no queries (expected one description per line)")
    return queries


def run_search(checkpoint: str | Path, gallery: str | Path, queries: Sequence[str], topk: int = 10,
               config_path: str | None = None, device: str = "auto", batch_size: int = 32, num_workers: int = 0,
               skip_bad_images: bool = False, index_dir: str | Path | None = None,
               grid_path: str | Path | None = None, explain: int = 0,
               ) -> tuple[FolderIndex, list[QueryResult], list[Path]]:
    """Loads the model, indexes ``gallery`` (cached), ranks it for every query and draws the grid (and heatmaps);
    returns ``(index, results, written PNG paths)``, the grid first, then the heatmap panels.

    Args:
        checkpoint: model weights (see :func:`load_search_model`).
        config_path: YAML config for checkpoints that carry none.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        batch_size: images per encoder pass (and queries per text pass).
        num_workers: image-decoding worker processes.
        skip_bad_images: leave unreadable images out instead of failing.
        index_dir: where the index cache goes (default ``<gallery>/.cada_index``).
        grid_path: PNG to draw the results into; None draws nothing.
        explain: per query, draw the per-word heatmaps of its top ``explain`` images
            (``<grid stem>_explain_<n>.png``, :func:`engine.explain.explain_search`).
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    clean_queries(queries)
    if not Path(gallery).is_dir():  # fail before loading the model
        raise GalleryError(f"gallery folder not found: {gallery}")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    model, config = load_search_model(checkpoint, config_path, device)
    key = index_key(file_hash(checkpoint, CHECKPOINT_HASH_LENGTH), config.model.image_size)
    index = index_folder(model, gallery, builders.build_eval_transform(config), key, device, batch_size, num_workers,
                         skip_bad_images, index_dir)
    results = search(model, index, builders.tokenizer_for(config), queries, topk, config.eval.k_test,
                     config.eval.rerank, config.model.max_text_len, device, batch_size, config.eval.amp)
    written = draw_results(results, index, grid_path) if grid_path is not None else []
    if explain:
        written += explain_search(Explainer.for_config(model, config, device), results, index,
                                  grid_path or "retrieval.png", explain)
    return index, results, written
