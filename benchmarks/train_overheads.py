"""Three per-step costs this codebase removes, each timed against the reference's way in the same run.

1. ARA vocabulary projection: the reference computes decoder logits for every position, (B, L, V); we
   project only the masked positions. Measured on cada_base sizes (B 24, L 73, D 768, V 30,524), forward
   and backward through the MLM head, with the masking rate of token mode (p 0.4 of attribute words).
2. Text preprocessing: the reference tokenizes and POS-tags every caption in every step; we do it once
   when the dataset is built. Measured as the time to prepare one epoch of batches both ways.
3. The text pass's last layer: the reference computes every position although the global loss reads only
   [CLS]; a model without dropout (cada_tiny) computes [CLS] alone. Measured as the synthetic recipe's
   global-only step (cada_tiny, 128x64, batch 32, forward and backward), the two ways alternating.

Usage: python benchmarks/train_overheads.py [--batch 24] [--captions 2000] [--recipe-batch 32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cuhk_like_captions, prepare_text, train_batch  # noqa: E402
from datasets.attributes import attribute_candidates, build_tagger  # noqa: E402
from datasets.synthetic import describe, sample_identity  # noqa: E402
from datasets.tokenization import build_tokenizer, encode  # noqa: E402
from models.cada import CADA  # noqa: E402
from models.cada_backbone import CADABackbone  # noqa: E402
from models.med_bert import TextDecoder  # noqa: E402
from models.registry import get_model_spec  # noqa: E402
from utils.config_schema import LossConfig  # noqa: E402
from utils.vocab import VOCAB_SIZE  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def ara_head(batch: int) -> None:
    torch.manual_seed(0)
    decoder = TextDecoder(VOCAB_SIZE, 768, 0, 12, 3072, image_width=768)  # the head only: zero layers
    hidden = torch.randn(batch, 73, 768, requires_grad=True)
    labels = torch.full((batch, 73), -100)
    labels[torch.rand(batch, 73) < 0.12] = 1000  # ~0.4 x the share of attribute words in a caption

    def full():
        logits = decoder.cls(hidden)  # (B, L, V)
        torch.nn.functional.cross_entropy(logits.view(-1, VOCAB_SIZE), labels.view(-1)).backward()

    def masked_only():
        selected = labels != -100
        logits = decoder.cls(hidden[selected])  # (M, V)
        torch.nn.functional.cross_entropy(logits, labels[selected]).backward()

    t_full, t_masked = timed(full), timed(masked_only)
    print(f"ARA head, B={batch}: all positions {t_full * 1e3:.0f} ms, masked only {t_masked * 1e3:.0f} ms "
          f"-> {t_full / t_masked:.1f}x faster; logits tensor {batch * 73 * VOCAB_SIZE * 4 / 2**20:.0f} MiB "
          f"vs {int((labels != -100).sum()) * VOCAB_SIZE * 4 / 2**20:.0f} MiB")


def text_preprocessing(num_captions: int, batch: int) -> None:
    rng = np.random.default_rng(0)
    captions = [describe(sample_identity(rng), rng).lower() for _ in range(num_captions)]
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")

    def per_step():  # the reference: every batch tokenized and tagged again
        for start in range(0, num_captions, batch):
            chunk = captions[start:start + batch]
            encode(tokenizer, chunk, 73)
            [attribute_candidates(c, tokenizer, tagger) for c in chunk]

    cached_ids, _ = encode(tokenizer, captions, 73)

    def cached():  # ours: index the tensors built once
        for start in range(0, num_captions, batch):
            cached_ids[start:start + batch].clone()

    t_step, t_cached = timed(per_step, 1), timed(cached, 1)
    print(f"text preprocessing of {num_captions} captions per epoch: per step {t_step * 1e3:.0f} ms, "
          f"cached {t_cached * 1e3:.1f} ms -> {t_step / t_cached:.0f}x less work per epoch")


def text_cls_pass(batch: int, image_size=(128, 64), repeats: int = 10) -> dict:
    """Seconds per global-only step with the text pass's last layer on every position vs on [CLS] alone,
    and the largest difference between the two ways' losses (0 up to float rounding)."""
    torch.manual_seed(0)
    objective = LossConfig()
    objective.ara.weight = 0.0  # as in configs/synthetic.yaml
    model = CADA(get_model_spec("cada_tiny"), image_size, objective=objective).train()  # no dropout
    text = prepare_text(cuhk_like_captions(batch, seed=1), build_tokenizer(), build_tagger("auto"),
                        torch.Generator().manual_seed(0))
    data = train_batch(text, image_size)

    def every_position(ids, mask, first_token_only=False):  # the reference: the full last layer
        return CADABackbone.encode_text(model, ids, mask)

    seconds, losses = {"every position": [], "[CLS] alone": []}, {}
    for _ in range(repeats + 1):  # alternating, the first round discarded as warm-up
        for way in seconds:
            if way == "every position":
                model.encode_text = every_position
            else:
                del model.encode_text  # back to the class's method
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = model(data, local=False)["global"]
            loss.backward()
            seconds[way].append(time.perf_counter() - start)
            losses[way] = loss.item()
    median = {way: float(np.median(times[1:])) for way, times in seconds.items()}
    difference = abs(losses["every position"] - losses["[CLS] alone"])
    print(f"text pass, cada_tiny global-only step, B={batch}: every position {median['every position'] * 1e3:.0f} ms, "
          f"[CLS] alone {median['[CLS] alone'] * 1e3:.0f} ms -> "
          f"{median['every position'] / median['[CLS] alone']:.2f}x faster; |loss difference| {difference:.1e}")
    return {"seconds": median, "loss_difference": difference}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--captions", type=int, default=2000)
    parser.add_argument("--recipe-batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ara_head(args.batch)
    text_preprocessing(args.captions, args.batch)
    text_cls_pass(args.recipe_batch)
