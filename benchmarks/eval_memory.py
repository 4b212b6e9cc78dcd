"""Peak extra memory and time of chunked retrieval evaluation vs. the naive full-matrix approach.

A random text-to-image problem shaped like ICFG-PEDES test (19,848 queries x 19,848 images, 256-d features, about
20 images per identity); each approach runs in a fresh subprocess, measuring wall time and the peak resident
memory above the level reached once the features are built (``VmHWM``, see ``benchmarks/common.py``):

- chunked: ``iter_similarity_chunks`` + ``RetrievalMetrics`` over all queries;
- chunked + rerank: the same with ``engine.rerank.rerank`` (k = 16, a cheap synthetic ITM logit) in between;
- naive: the whole (Q, G) similarity matrix, a full sort and cumulative sums over it, on the first
  ``--naive-queries`` queries only (every array it holds is proportional to Q x G), scaled linearly to all
  queries (the output says so). Its metrics on that subset must match the chunked path's, or the benchmark stops.

Usage: python benchmarks/eval_memory.py [--queries 19848 --gallery 19848 --naive-queries 2000 --save]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_output_arguments, finish, proc_status_kib, reset_peak_memory, setup_threads  # noqa: E402
from engine.rerank import rerank  # noqa: E402
from utils.metrics import DEFAULT_CHUNK_SIZE, RetrievalMetrics, iter_similarity_chunks, summarize  # noqa: E402

IMAGES_PER_ID = 20


def build_problem(num_queries: int, gallery_size: int, dim: int, seed: int = 0):
    """Random features and pids; every query's identity appears in the gallery."""
    generator = torch.Generator().manual_seed(seed)
    num_ids = max(1, gallery_size // IMAGES_PER_ID)
    gallery_pids = torch.randperm(gallery_size, generator=generator) % num_ids  # (G,)
    query_pids = torch.randint(0, num_ids, (num_queries,), generator=generator)  # (Q,)
    text_feats = torch.randn(num_queries, dim, generator=generator)  # (Q, D)
    image_feats = torch.randn(gallery_size, dim, generator=generator)  # (G, D)
    # Nudge each text towards its identity's mean image so the metrics are above chance.
    id_means = torch.zeros(num_ids, dim).index_add_(0, gallery_pids, image_feats)
    text_feats += 0.05 * id_means[query_pids]
    return text_feats, image_feats, query_pids, gallery_pids


def synthetic_match_logits(query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic stand-in for the fused encoder's ITM logit."""
    return torch.sin(query_index.unsqueeze(1).double() * 0.37 + gallery_index.double() * 0.11).float()  # (n, k)


def run_chunked(text_feats, image_feats, query_pids, gallery_pids, chunk_size, rerank_k):
    accumulator = RetrievalMetrics()
    for start, scores in iter_similarity_chunks(text_feats, image_feats, chunk_size):
        if rerank_k:
            scores = rerank(scores, rerank_k, synthetic_match_logits, query_offset=start, batch_queries=64).scores
        accumulator.update(scores, query_pids[start : start + chunk_size], gallery_pids)
    return accumulator


def run_naive(text_feats, image_feats, query_pids, gallery_pids):
    """Full-matrix evaluation as commonly written: every intermediate is a (Q, G) array."""
    text = torch.nn.functional.normalize(text_feats, dim=-1)
    image = torch.nn.functional.normalize(image_feats, dim=-1)
    similarity = text @ image.T  # (Q, G)
    ranked = torch.sort(similarity, dim=1, descending=True, stable=True).indices  # (Q, G)
    matches = gallery_pids[ranked] == query_pids.unsqueeze(1)  # (Q, G)
    hits_so_far = matches.cumsum(dim=1)  # (Q, G)
    rank = torch.arange(1, matches.shape[1] + 1)
    positives = matches.sum(dim=1)
    average_precision = ((hits_so_far / rank) * matches).sum(dim=1) / positives
    first_rank = matches.int().argmax(dim=1) + 1
    last_rank = matches.shape[1] - matches.flip(1).int().argmax(dim=1)
    return summarize({"first_positive_rank": first_rank, "average_precision": average_precision.double(),
                      "inverse_negative_penalty": (positives / last_rank).double()}, ks=(1, 10))


def worker(args) -> dict:
    text_feats, image_feats, query_pids, gallery_pids = build_problem(args.queries, args.gallery, args.dim)
    if args.worker == "naive":
        text_feats, query_pids = text_feats[: args.naive_queries].clone(), query_pids[: args.naive_queries]
    reset_peak_memory(torch.device("cpu"))  # VmHWM back to the current resident size
    baseline_kib = proc_status_kib("VmRSS")
    start = time.perf_counter()
    if args.worker == "naive":
        metrics = run_naive(text_feats, image_feats, query_pids, gallery_pids)
    else:
        rerank_k = args.rerank_k if args.worker == "rerank" else 0
        accumulator = run_chunked(text_feats, image_feats, query_pids, gallery_pids, args.chunk_size, rerank_k)
        metrics = accumulator.compute()
        subset = {name: values[: args.naive_queries] for name, values in accumulator.per_query().items()}
        metrics["subset"] = summarize(subset, ks=(1, 10))
    seconds = time.perf_counter() - start
    peak_extra_mib = (proc_status_kib("VmHWM") - baseline_kib) / 1024
    return {"seconds": seconds, "peak_extra_mib": peak_extra_mib, "metrics": metrics}


def spawn(mode: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", mode] + [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("queries", "gallery", "dim", "chunk_size", "naive_queries", "rerank_k")
    ]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=19848)
    parser.add_argument("--gallery", type=int, default=19848)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--naive-queries", type=int, default=2000)
    parser.add_argument("--rerank-k", type=int, default=16)
    parser.add_argument("--worker", choices=("chunked", "rerank", "naive"), help=argparse.SUPPRESS)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_threads()
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    chunked, reranked, naive = (spawn(mode, args) for mode in ("chunked", "rerank", "naive"))
    subset = chunked["metrics"].pop("subset")
    if any(abs(subset[key] - naive["metrics"][key]) >= 1e-6 for key in subset):
        raise SystemExit(f"metric mismatch on the subset: chunked {subset} vs naive {naive['metrics']}")
    scale = args.queries / args.naive_queries  # every array the full matrix holds is proportional to Q
    rows = [{"approach": "chunked", "peak_extra_mib": chunked["peak_extra_mib"], "seconds": chunked["seconds"]},
            {"approach": f"chunked + re-ranking (k {args.rerank_k})", "peak_extra_mib": reranked["peak_extra_mib"],
             "seconds": reranked["seconds"]},
            {"approach": "full matrix", "peak_extra_mib": naive["peak_extra_mib"] * scale,
             "seconds": naive["seconds"] * scale}]
    run = {"queries": args.queries, "gallery": args.gallery, "dim": args.dim, "chunk_size": args.chunk_size,
           "measured_queries": args.naive_queries, "metrics": chunked["metrics"], "rows": rows}
    finish(args, "eval_memory", f"{args.queries:,} x {args.gallery:,}, {args.dim}-d, chunks of {args.chunk_size}",
           run, torch.device("cpu"))
    return run


if __name__ == "__main__":
    main()
