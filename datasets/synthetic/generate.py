"""Writes a synthetic dataset in the exact CUHK-PEDES format, atomically.

Layout: ``out_dir/reid_raw.json`` (a list of records ``{split, captions, file_path, processed_tokens, id,
attributes, mentions, regions}``; ``file_path`` relative to ``imgs/``, ``id`` 1-based, ``attributes`` the identity
as drawn and ``mentions`` the attribute kinds each caption describes, both ignored by the readers and used by
:mod:`datasets.synthetic.oracle` and :mod:`datasets.synthetic.fresh`; ``regions`` where each part is drawn and
which caption words name it, the optional field of :mod:`datasets.regions`, for the pointing game) and
``out_dir/imgs/<split>/pNNNNN_sKK.jpg``, plus ``generator.json`` with the generation parameters. Splits are by
identity (see :func:`split_layout` for which ids go where). Everything is a function of the seed: the same
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

from datasets.records import clean_caption
from datasets.regions import encode_mask
from datasets.synthetic.captions import describe, sample_mentions, word_parts
from datasets.synthetic.identity import sample_identities
from datasets.synthetic.render import render_person_with_regions

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # 2: records name the kinds each caption mentions; 3: and carry part regions
ANNOTATION_FILE = "reid_raw.json"
METADATA_FILE = "generator.json"
MIRROR_PROBABILITY = 0.5
LEADING_TRAIN_RATIO = 7 / 3  # training identities drawn before val and test, per val + test identity
JPEG_QUALITY = 95
_TOKEN = re.compile(r"[a-z0-9'-]+")


def split_layout(train_ids: int, val_ids: int, test_ids: int) -> list[str]:
    """The split of each identity in drawing order (person ids 1, 2, ...).

    A leading block of training identities, then val, then test, then the remaining training identities.
    The leading block holds 7/3 as many identities as val and test together (70/10/20 proportions), or all of
    train when it is smaller, so growing ``train_ids`` beyond it leaves the val and test people (and every byte
    of their photos) as they were.
    """
    for name, count in (("train_ids", train_ids), ("val_ids", val_ids), ("test_ids", test_ids)):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    leading = min(train_ids, round(LEADING_TRAIN_RATIO * (val_ids + test_ids)))
    return ["train"] * leading + ["val"] * val_ids + ["test"] * test_ids + ["train"] * (train_ids - leading)


def _pair_of_mentions(rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Two different attribute subsets, one per caption of an image."""
    first, second = sample_mentions(rng), sample_mentions(rng)
    while second == first:
        second = sample_mentions(rng)
    return first, second


def generate_dataset(out_dir: str | Path, train_ids: int, val_ids: int, test_ids: int, seed: int,
                     images_per_id: int = 4, image_size: tuple[int, int] = (128, 64), overwrite: bool = False) -> Path:
    """Generates the dataset into ``out_dir`` and returns its absolute path.

    The files are written to a hidden sibling folder that is renamed to ``out_dir`` only when complete,
    so an interrupted run never leaves a folder that looks like a dataset.

    Args:
        out_dir: the dataset folder to create (the registry reads ``<data_root>/synthetic-pedes``).
        train_ids, val_ids, test_ids: number of identities of each split.
        seed: the random seed; it fixes every byte of the output.
        images_per_id: images per identity (each gets 2 captions).
        image_size: ``(height, width)`` of the images.
        overwrite: replace an existing non-empty ``out_dir``; otherwise that is an error.
    """
    out_dir = Path(out_dir).resolve()
    if images_per_id < 1:
        raise ValueError(f"images_per_id must be >= 1, got {images_per_id}")
    layout = split_layout(train_ids, val_ids, test_ids)
    if not layout:
        raise ValueError("train_ids + val_ids + test_ids is 0: no identities to generate")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}")
    staging.mkdir()
    try:
        _write_dataset(staging, seed, images_per_id, layout, image_size)
        metadata = {"generator_version": GENERATOR_VERSION, "train_ids": train_ids, "val_ids": val_ids,
                    "test_ids": test_ids, "seed": seed, "images_per_id": images_per_id, "image_size": list(image_size)}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d identities x %d images to %s in %.1f s", len(layout), images_per_id, out_dir,
                time.perf_counter() - start)
    return out_dir


def _write_dataset(folder: Path, seed: int, images_per_id: int, splits: list[str],
                   image_size: tuple[int, int]) -> None:
    """``splits``: the split of each identity, in the order they are drawn (:func:`split_layout`)."""
    identities = sample_identities(np.random.default_rng(seed), len(splits))
    for split in ("train", "val", "test"):
        (folder / "imgs" / split).mkdir(parents=True)
    records = []
    for person_id, (identity, split) in enumerate(zip(identities, splits), start=1):
        for shot in range(images_per_id):
            # One generator per image: each image depends only on (seed, id, shot).
            rng = np.random.default_rng([seed, person_id, shot])
            seen = identity.mirrored() if rng.random() < MIRROR_PROBABILITY else identity
            relative_path = f"{split}/p{person_id:05d}_s{shot:02d}.jpg"
            image, regions = render_person_with_regions(seen, rng, image_size)
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
                "regions": {"size": list(image_size),
                            "parts": {part: encode_mask(mask) for part, mask in regions.items()},
                            "words": [word_parts(seen, clean_caption(c).split(" ")) for c in captions]},
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
