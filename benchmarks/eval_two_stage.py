"""Two-stage evaluation (cosine top-k, then ITM re-ranking) against the authors' way, in one run.

Baseline (the authors' way): queries padded to 73 tokens, the fused encoder called per query over its k
candidates (each pair with its own copy of the image tokens). Ours: queries trimmed to their longest and re-ranked
in length-sorted groups, each distinct candidate image's cross-attention keys/values projected once per group
(``engine.rerank.shared_itm_scorer``), optionally under bf16 autocast. Both encode the same random gallery;
seconds are split into stage 1 (encoding + cosine top-k) and stage 2 (re-ranking); at fp32 the rankings are compared.

Usage: python benchmarks/eval_two_stage.py [--model cada_base --queries 6156 --gallery 3074 --k 16 --save]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_output_arguments,
    cuhk_like_captions,
    finish,
    pick_device,
    setup_threads,
    synchronize,
)
from datasets.tokenization import build_tokenizer, encode  # noqa: E402
from engine.rerank import length_order, rerank, shared_itm_scorer  # noqa: E402
from models.cada_backbone import CADABackbone  # noqa: E402
from models.padding import trim_to_longest  # noqa: E402
from models.registry import get_model_spec  # noqa: E402
from utils.metrics import iter_similarity_chunks  # noqa: E402
from utils.precision import autocast  # noqa: E402
from utils.vocab import ENC_ID, MAX_TEXT_LEN  # noqa: E402


@torch.no_grad()
def two_stage(model, images, ids, mask, k: int, device, fast: bool, amp: str = "off", batch: int = 64,
              chunk: int = 512, batch_queries: int = 32) -> dict:
    """Runs both stages; returns seconds per stage and the final top-k order per query (Q, k)."""
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, amp):
        tokens = torch.cat([model.encode_image(images[i:i + batch].to(device)) for i in range(0, len(images), batch)])
        image_feats = model.image_features(tokens).float()
        text_feats = []
        for i in range(0, len(ids), batch):
            q_ids, q_mask = ids[i:i + batch].to(device), mask[i:i + batch].to(device)
            if fast:
                q_ids, q_mask = trim_to_longest(q_ids, q_mask)
            text_feats.append(model.text_features(model.encode_text(q_ids, q_mask, first_token_only=fast)).float())
    text_feats = torch.cat(text_feats)
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    synchronize(device)
    stage1 = time.perf_counter() - start
    if fast:
        scorer = shared_itm_scorer(model, enc_ids, mask, tokens, device, amp)
    else:
        def scorer(query_index, gallery_index):  # one query: the fused encoder over its k candidates at length 73
            (q,), (row,) = query_index.tolist(), gallery_index
            logits = model.itm_head(model.fuse(enc_ids[q:q + 1].to(device).expand(len(row), -1),
                                               mask[q:q + 1].to(device).expand(len(row), -1), tokens[row])[:, 0])
            return logits[None, :, 1].float()
    start, orders = time.perf_counter(), []
    for first, scores in iter_similarity_chunks(text_feats, image_feats, chunk):
        order = length_order(mask[first:first + len(scores)]) if fast else None
        result = rerank(scores, k, scorer, query_offset=first, batch_queries=batch_queries if fast else 1,
                        query_order=order)
        orders.append(result.scores.topk(k, dim=1).indices.cpu())
    synchronize(device)
    return {"stage1_s": stage1, "rerank_s": time.perf_counter() - start, "orders": torch.cat(orders)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cada_base")
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--gallery", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--batch-queries", type=int, default=32)
    parser.add_argument("--amp", default="off,bf16", help="precisions of our path, comma-separated")
    parser.add_argument("--device", default="auto")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_threads()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = CADABackbone(get_model_spec(args.model), tuple(args.image_size)).to(device).eval()
    ids, mask = encode(build_tokenizer(), cuhk_like_captions(args.queries, seed=3), MAX_TEXT_LEN)
    images = torch.randn(args.gallery, 3, *args.image_size, generator=torch.Generator().manual_seed(0))

    baseline = two_stage(model, images, ids, mask, args.k, device, fast=False)
    rows = [{"variant": "baseline", "stage1_s": baseline["stage1_s"], "rerank_s": baseline["rerank_s"]}]
    for amp in args.amp.split(","):
        ours = two_stage(model, images, ids, mask, args.k, device, fast=True, amp=amp, batch_queries=args.batch_queries)
        rows.append({"variant": amp, "stage1_s": ours["stage1_s"], "rerank_s": ours["rerank_s"],
                     "same_top_k": bool(torch.equal(ours["orders"], baseline["orders"]))})
    run = {"model": args.model, "queries": args.queries, "gallery": args.gallery, "k": args.k,
           "image_size": list(args.image_size), "rows": rows}
    height, width = args.image_size
    finish(args, "eval_two_stage", f"{args.model}, {args.queries} queries x {args.gallery} images, k {args.k}, "
                                   f"{height}x{width}", run, device)
    return run


if __name__ == "__main__":
    main()
