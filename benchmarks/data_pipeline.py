"""Training data loader throughput at 0, 2 and 4 workers, against the training step's rate.

Renders a small synthetic set (JPEG files at the training image size, CUHK-PEDES-like captions), builds
``TrainPairs`` with ARA masking and the training transform exactly as training does, and times full
epochs of batches through a ``DataLoader`` with pinned memory and persistent workers. The loader is
not the bottleneck when its samples/s exceed the step's (``--step-rate``, e.g. from train_step.py).

Usage: python benchmarks/data_pipeline.py [--images 96 --batch 24 --workers 0,2,4 --step-rate 2.5 --save]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ARA_PROB, add_output_arguments, cuhk_like_captions, finish, setup_threads  # noqa: E402
from datasets.ara_masking import pack_candidate_groups  # noqa: E402
from datasets.attributes import attribute_candidates, build_tagger  # noqa: E402
from datasets.person_search import TrainPairs  # noqa: E402
from datasets.records import PersonRecord  # noqa: E402
from datasets.sampler import TrainSampler  # noqa: E402
from datasets.synthetic import render_person, sample_identity  # noqa: E402
from datasets.tokenization import build_tokenizer  # noqa: E402
from datasets.transforms import build_image_transform  # noqa: E402
from utils.vocab import MAX_TEXT_LEN  # noqa: E402


def build_set(folder: Path, num_images: int, image_size: tuple[int, int]) -> TrainPairs:
    """``num_images`` rendered people (two images per person, two captions per image)."""
    rng = np.random.default_rng(0)
    captions = cuhk_like_captions(2 * num_images, seed=4)
    records = []
    for index in range(num_images):
        person = index // 2
        path = folder / f"{index}.jpg"
        render_person(sample_identity(rng), rng, size=image_size).save(path, quality=90)
        records.append(PersonRecord(path, person, tuple(captions[2 * index:2 * index + 2]), "train"))
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")

    def groups(texts: list[str]) -> torch.Tensor:
        return pack_candidate_groups([attribute_candidates(c, tokenizer, tagger, max_len=MAX_TEXT_LEN) for c in texts],
                                     MAX_TEXT_LEN)
    return TrainPairs(records, build_image_transform(image_size, train=True), tokenizer, MAX_TEXT_LEN,
                      captions="all", candidate_groups=groups, mask_prob=ARA_PROB)


def loader_rate(dataset: TrainPairs, batch: int, workers: int, epochs: int) -> float:
    """Samples per second over ``epochs`` full epochs after a first, untimed one (worker start-up)."""
    sampler = TrainSampler(dataset.labels, batch, 0, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    samples, start = 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start = time.perf_counter()
        sampler.set_epoch(epoch)
        for items in loader:
            samples += len(items["image"]) if epoch else 0
    return samples / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=(384, 128))
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--step-rate", type=float, default=None, help="training samples/s to compare with")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_threads()
    with tempfile.TemporaryDirectory() as folder:
        dataset = build_set(Path(folder), args.images, tuple(args.image_size))
        rows = [{"workers": workers, "samples_per_s": loader_rate(dataset, args.batch, workers, args.epochs)}
                for workers in map(int, args.workers.split(","))]
    run = {"images": args.images, "batch": args.batch, "image_size": list(args.image_size),
           "step_rate": args.step_rate, "rows": rows}
    height, width = args.image_size
    finish(args, "data_pipeline", f"batch {args.batch}, {height}x{width}, {args.images} images", run,
           torch.device("cpu"))
    return run


if __name__ == "__main__":
    main()
