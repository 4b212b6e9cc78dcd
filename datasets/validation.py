"""Checks person records before any training time is spent.

Every split the run needs is non-empty; every image exists and its header decodes; every caption says
something after tokenizing (not empty, not only ``[UNK]`` and punctuation); no image is listed under two
person ids or in two splits. All problems found are raised together as one :class:`~utils.errors.DataError`
naming the first few records and the count; long captions are only counted in the log.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from PIL import Image
from tokenizers import Tokenizer
from tqdm import tqdm

from datasets.records import PersonRecord
from utils.errors import ConfigError, DataError
from utils.vocab import UNK_ID

log = logging.getLogger(__name__)

SHOWN = 5  # records named per problem
DUPLICATE_POLICIES = ("error", "warn")
_IMAGES_PER_TASK = 256
_EMPTY_HINTS = {"val": " (set data.val_from_train to hold out training identities as val)"}


def validate_splits(splits: dict[str, list[PersonRecord]], needed: Sequence[str], tokenizer: Tokenizer,
                    max_len: int, source: str, drop_bad_captions: bool = False,
                    duplicate_images: str = "error", workers: int | None = None,
                    show_progress: bool = True) -> dict[str, list[PersonRecord]]:
    """Checks all records of ``splits``; returns them, less bad captions when ``drop_bad_captions``.

    Args:
        needed: the splits the run reads; each must be non-empty (after dropping).
        max_len: the text length, ``[CLS]`` and ``[SEP]`` included; longer captions are counted as cut.
        source: the dataset folder or annotation file, named in messages.
        drop_bad_captions: drop captions that say nothing (and records left with none) instead of failing.
        duplicate_images: ``'error'`` or ``'warn'`` for an image under two ids or in two splits.
        workers: threads reading image headers (default: 4 per CPU, at most 32).
        show_progress: show a progress bar while reading image headers (one process of several: false).

    Raises:
        DataError: listing every problem found, a few lines each.
    """
    if duplicate_images not in DUPLICATE_POLICIES:
        raise ConfigError(f"data.duplicate_images must be one of {', '.join(DUPLICATE_POLICIES)}, "
                          f"got {duplicate_images!r}")
    splits, problems = check_captions(splits, tokenizer, max_len, source, drop_bad_captions)
    problems += [f"split '{name}' of {source} is empty, but the run needs it{_EMPTY_HINTS.get(name, '')}"
                 for name in needed if not splits.get(name)]
    duplicates = find_duplicate_images(splits, source)
    if duplicate_images == "warn":
        for message in duplicates:
            log.warning("%s", message)
    else:
        problems += [f"{m}\n  (set data.duplicate_images=warn to go on anyway)" for m in duplicates]
    problems += check_images([r.image_path for part in splits.values() for r in part], source, workers,
                             show_progress)
    if problems:
        raise DataError("\n".join(problems))
    return splits


def _listing(items: Sequence[str]) -> str:
    return f"first {min(len(items), SHOWN)}:" + "".join(f"\n  {item}" for item in items[:SHOWN])


def caption_token_ids(tokenizer: Tokenizer, captions: list[str]) -> list[list[int]]:
    """WordPiece ids of each caption without special tokens, truncation or padding; ``tokenizer`` is left as it was."""
    truncation, padding = tokenizer.truncation, tokenizer.padding
    tokenizer.no_truncation()
    tokenizer.no_padding()
    try:
        return [e.ids for e in tokenizer.encode_batch(captions, add_special_tokens=False)]
    finally:
        if truncation is not None:
            tokenizer.enable_truncation(**truncation)
        if padding is not None:
            tokenizer.enable_padding(**padding)


def check_captions(splits: dict[str, list[PersonRecord]], tokenizer: Tokenizer, max_len: int, source: str,
                   drop: bool) -> tuple[dict[str, list[PersonRecord]], list[str]]:
    """Finds captions that are empty or only ``[UNK]``/punctuation; logs how many will be cut at ``max_len``.

    Returns ``(splits, problems)``: with ``drop``, the splits less those captions (and records left with none)
    and no problem; otherwise the splits unchanged and a problem message if any caption is bad.
    """
    owners = [(name, r) for name, part in splits.items() for r in part]
    captions = [c for _, r in owners for c in r.captions]
    token_ids = caption_token_ids(tokenizer, captions)
    distinct_ids = {t for tokens in token_ids for t in tokens}
    # [UNK] and tokens without a letter or digit (punctuation, symbols), each id looked up once
    useless = {UNK_ID} | {t for t in distinct_ids if not any(ch.isalnum() for ch in tokenizer.id_to_token(t) or "")}
    ids = iter(token_ids)
    bad: list[str] = []
    cut = emptied = 0
    cleaned: dict[str, list[PersonRecord]] = {name: [] for name in splits}
    for name, record in owners:
        kept = []
        for index, caption in enumerate(record.captions):
            tokens = next(ids)
            cut += len(tokens) + 2 > max_len
            if all(t in useless for t in tokens):
                reason = "empty" if not tokens else "only [UNK]/punctuation"
                bad.append(f"{name} {record.image_path} caption {index} {caption!r}: {reason}")
            else:
                kept.append(caption)
        if not kept:
            emptied += 1
        elif len(kept) == len(record.captions):
            cleaned[name].append(record)
        else:
            cleaned[name].append(replace(record, captions=tuple(kept)))
    if cut:
        log.info("%d of %d captions of %s are longer than %d tokens and will be cut", cut, len(captions), source,
                 max_len)
    if not bad:
        return splits, []
    if not drop:
        return splits, [f"{len(bad)} of {len(captions)} captions of {source} are empty or only [UNK]/punctuation "
                        f"after tokenizing; {_listing(bad)}\n"
                        f"  (set data.drop_bad_captions=true to drop them)"]
    log.warning("dropped %d of %d captions of %s that are empty or only [UNK]/punctuation, and %d records left "
                "with no caption", len(bad), len(captions), source, emptied)
    return cleaned, []


def find_duplicate_images(splits: dict[str, list[PersonRecord]], source: str) -> list[str]:
    """Messages for image files listed under more than one person id, and for files in more than one split."""
    ids, split_names = defaultdict(set), defaultdict(list)
    for name, part in splits.items():
        for record in part:
            ids[record.image_path].add(record.person_id)
            if name not in split_names[record.image_path]:
                split_names[record.image_path].append(name)
    messages = []
    multi_id = [f"{path}: ids {', '.join(map(str, sorted(owners)))}" for path, owners in ids.items() if len(owners) > 1]
    if multi_id:
        messages.append(f"{len(multi_id)} images of {source} are listed under more than one person id; "
                        f"{_listing(multi_id)}")
    shared = [f"{path}: {', '.join(names)}" for path, names in split_names.items() if len(names) > 1]
    if shared:
        messages.append(f"{len(shared)} images of {source} are in more than one split (an image seen in training "
                        f"inflates test results); {_listing(shared)}")
    return messages


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image (missing, or a header that does not decode), or ``None``."""
    try:
        with Image.open(path) as image:  # parses the header (size, mode), decodes no pixels
            width, height = image.size
    except FileNotFoundError:
        return "missing"
    except Exception as error:  # PIL's format plugins raise many types for a bad file
        return f"unreadable ({type(error).__name__}: {error})"
    return None if width > 0 and height > 0 else f"unreadable (size {width}x{height})"


def _problems_in(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    return [(path, problem) for path in paths if (problem := image_problem(path)) is not None]


def check_images(paths: Sequence[Path], source: str, workers: int | None = None,
                 show_progress: bool = True) -> list[str]:
    """Reads the header of every distinct image on a thread pool; returns one message naming the bad ones, or none."""
    unique = list(dict.fromkeys(paths))
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    tasks = [unique[i:i + _IMAGES_PER_TASK] for i in range(0, len(unique), _IMAGES_PER_TASK)]
    bad: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(unique), desc="checking images", unit="img",
                                                    disable=not show_progress or len(unique) < 1000) as bar:
        for task, found in zip(tasks, pool.map(_problems_in, tasks)):
            bad += found
            bar.update(len(task))
    if not bad:
        log.info("%d images of %s checked: all present and readable", len(unique), source)
        return []
    return [f"{len(bad)} of {len(unique)} images of {source} are missing or unreadable; "
            f"{_listing([f'{path}: {problem}' for path, problem in bad])}"]
