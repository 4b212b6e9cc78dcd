"""Writes a synthetic dataset in the exact CUHK-PEDES format, atomically.

Layout: ``out_dir/reid_raw.json`` (a list of records ``{split, captions, file_path, processed_tokens, id,
attributes, mentions}``; ``file_path`` relative to ``imgs/``, ``id`` 1-based, ``attributes`` the identity as
drawn and ``mentions`` the attribute kinds each caption describes, both ignored by the readers and used by
:mod:`datasets.synthetic.oracle` and :mod:`datasets.synthetic.fresh`) and
``out_dir/imgs/<split>/pNNNNN_sKK.jpg``, plus ``generator.json`` with the generation parameters. Splits are by
identity with increasing ids: train first, then val, then test. Everything is a function of the seed: the same
arguments give byte-identical JSON and images.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from datasets.synthetic.captions import describe, sample_mentions
from datasets.synthetic.identity import sample_identities
from datasets.synthetic.render import render_person

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: records name the kinds each caption mentions
ANNOTATION_FILE = "reid_raw.json"
METADATA_FILE = "generator.json"
CAPTIONS_PER_IMAGE = 2
MIRROR_PROBABILITY = 0.5
JPEG_QUALITY = 95
_TOKEN = re.compile(r"[a-z0-9'-]+")


def split_sizes(num_ids: int, split_fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Numbers of train / val / test identities; every split with a positive fraction gets at least one.

    Args:
        num_ids: total number of identities.
        split_fractions: train, val, test fractions, non-negative and summing to 1.
    """
    if len(split_fractions) != 3 or min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}")
    val, test = (max(1, round(num_ids * f)) if f > 0 else 0 for f in split_fractions[1:])
    train = num_ids - val - test
    if train < (1 if split_fractions[0] > 0 else 0) or (split_fractions[0] == 0 and train != 0):
        raise ValueError(f"{num_ids} identities cannot fill the splits {split_fractions} (one id each at least)")
    return train, val, test


def _pair_of_mentions(rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Two different attribute subsets, one per caption of an image."""
    first = sample_mentions(rng)
    second = sample_mentions(rng)
    while second == first:
        second = sample_mentions(rng)
    return first, second


def generate_dataset(out_dir: str | Path, num_ids: int, seed: int, images_per_id: int = 4,
                     split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                     image_size: tuple[int, int] = (128, 64), overwrite: bool = False,
                     extra_train_ids: int = 0) -> Path:
    """Generates the dataset into ``out_dir`` and returns its absolute path.

    The files are written to a hidden sibling folder that is renamed to ``out_dir`` only when complete,
    so an interrupted run never leaves a folder that looks like a dataset.

    Args:
        out_dir: the dataset folder to create (the registry reads ``<data_root>/synthetic-pedes``).
        num_ids: number of identities.
        seed: the random seed; it fixes every byte of the output.
        images_per_id: images per identity (each gets 2 captions).
        split_fractions: train, val, test fractions of the identities.
        image_size: ``(height, width)`` of the images.
        overwrite: replace an existing non-empty ``out_dir``; otherwise that is an error.
        extra_train_ids: identities added to train after the ``num_ids`` split ones (ids ``num_ids + 1`` on),
            drawn after them from the same stream, so val and test are those of ``num_ids`` alone.
    """
    out_dir = Path(out_dir).resolve()
    if images_per_id < 1:
        raise ValueError(f"images_per_id must be >= 1, got {images_per_id}")
    if extra_train_ids < 0:
        raise ValueError(f"extra_train_ids must be >= 0, got {extra_train_ids}")
    sizes = split_sizes(num_ids, split_fractions)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}")
    staging.mkdir()
    try:
        _write_dataset(staging, seed, images_per_id, (*sizes, extra_train_ids), image_size)
        metadata = {"generator_version": GENERATOR_VERSION, "num_ids": num_ids, "seed": seed,
                    "images_per_id": images_per_id, "split_fractions": list(split_fractions),
                    "image_size": list(image_size), "extra_train_ids": extra_train_ids}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d identities x %d images to %s in %.1f s", num_ids + extra_train_ids, images_per_id, out_dir,
                time.perf_counter() - start)
    return out_dir


def _write_dataset(folder: Path, seed: int, images_per_id: int, sizes: tuple[int, int, int, int],
                   image_size: tuple[int, int]) -> None:
    """``sizes``: train, val, test, then extra train identities, in the order they are drawn."""
    identities = sample_identities(np.random.default_rng(seed), sum(sizes))
    splits = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2] + ["train"] * sizes[3]
    for split in ("train", "val", "test"):
        (folder / "imgs" / split).mkdir(parents=True)
    records = []
    for index, (identity, split) in enumerate(zip(identities, splits)):
        person_id = index + 1
        for shot in range(images_per_id):
            # One generator per image: each image depends only on (seed, id, shot).
            rng = np.random.default_rng([seed, person_id, shot])
            seen = identity.mirrored() if rng.random() < MIRROR_PROBABILITY else identity
            relative_path = f"{split}/p{person_id:05d}_s{shot:02d}.jpg"
            image = render_person(seen, rng, image_size)
            image.save(folder / "imgs" / relative_path, quality=JPEG_QUALITY, subsampling=0)
            mentions = _pair_of_mentions(rng)
            captions = [describe(seen, rng, kinds) for kinds in mentions]
            records.append({
                "split": split,
                "captions": captions,
                "file_path": relative_path,
                "processed_tokens": [_TOKEN.findall(c.lower()) for c in captions],
                "id": person_id,
                "attributes": dict(vars(seen)),  # field order; Identity is flat
                "mentions": [list(kinds) for kinds in mentions],
            })
    (folder / ANNOTATION_FILE).write_text(json.dumps(records), encoding="utf-8")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Renames the finished ``staging`` folder to ``out_dir``, moving any old one aside first."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
    os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired)
