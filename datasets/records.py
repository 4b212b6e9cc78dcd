"""The common record type of all person-retrieval datasets and the JSON record parser they share.

CUHK-PEDES, ICFG-PEDES and RSTPReid all ship one JSON list with one record per image (``id``, an image path
relative to ``imgs/``, ``captions``, ``split``). Parsing lives here so every format fails the same way: a
:class:`~utils.errors.DataError` naming the file, the record index and what was expected.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets.regions import PartRegions, parse_regions
from utils.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MAX_CAPTION_WORDS = 72
# Characters the reference replaces by spaces before tokenization (BLIP's ``pre_caption``).
_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE = re.compile(r"\s+")
_MISSING_SHOWN = 5
_INT64_LIMIT = 2 ** 63  # person ids become int64 tensors
_VALUE_SHOWN = 80  # characters of a wrong value quoted in a message


class DatasetFormatError(DataError):
    """An annotation file does not have the structure its dataset format requires."""


@dataclass(frozen=True)
class PersonRecord:
    """One image of one person with its cleaned captions (at least one; one may be empty until validated)."""

    image_path: Path  # absolute
    person_id: int  # the raw id from the annotation file
    captions: tuple[str, ...]
    split: str  # 'train', 'val' or 'test'
    regions: PartRegions | None = None  # optional part regions (datasets.regions)


def clean_caption(text: str, max_words: int = MAX_CAPTION_WORDS) -> str:
    """Lower-cases, replaces ``. ! " ( ) * # : ; ~`` by spaces, collapses whitespace and keeps ``max_words`` words."""
    text = _PUNCTUATION.sub(" ", text.lower())
    words = _WHITESPACE.sub(" ", text).strip().split(" ")
    return " ".join(words[:max_words])


def map_split(raw_split: str) -> str:
    """Maps a raw split value as IRRA does: ``'train'`` and ``'test'`` stay, anything else is ``'val'``."""
    return raw_split if raw_split in ("train", "test") else "val"


def read_utf8(path: Path) -> str:
    """A text file's contents (a UTF-8 byte-order mark is allowed); other encodings are named with the bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                        f"re-save it as UTF-8") from error


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_SHOWN else text[:_VALUE_SHOWN] + "..."


def parse_record(record: object, index: int, annotation_file: Path, image_dir: Path, path_key: str) -> PersonRecord:
    """Turns raw JSON record number ``index`` into a :class:`PersonRecord`; its image path is under ``path_key``."""
    where = f"{annotation_file}: record {index}"
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("id", path_key, "captions", "split"):
        if key not in record:
            raise DatasetFormatError(f"{where}: missing key '{key}' (has {sorted(record)})")

    raw_id = record["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
        raise DatasetFormatError(f"{where}: 'id' must be an integer, got {_shown(raw_id)}")
    try:
        person_id = int(raw_id)
    except ValueError as error:
        raise DatasetFormatError(f"{where}: 'id' must be an integer, got {_shown(raw_id)}") from error
    if not -_INT64_LIMIT <= person_id < _INT64_LIMIT:
        raise DatasetFormatError(f"{where}: 'id' {person_id} does not fit a 64-bit integer")

    relative_path = record[path_key]
    if not isinstance(relative_path, str) or not relative_path or "\0" in relative_path:
        raise DatasetFormatError(f"{where}: '{path_key}' must be a non-empty string, got {_shown(relative_path)}")

    raw_captions = record["captions"]
    if (not isinstance(raw_captions, list) or not raw_captions
            or not all(isinstance(c, str) for c in raw_captions)):
        raise DatasetFormatError(f"{where}: 'captions' must be a non-empty list of strings, got {_shown(raw_captions)}")
    captions = tuple(clean_caption(c) for c in raw_captions)

    raw_split = record["split"]
    if not isinstance(raw_split, str):
        raise DatasetFormatError(f"{where}: 'split' must be a string, got {_shown(raw_split)}")

    regions = None
    if "regions" in record:
        try:
            regions = parse_regions(record["regions"], captions)
        except ValueError as error:
            raise DatasetFormatError(f"{where}: 'regions': {error}") from None
    return PersonRecord(image_path=image_dir / relative_path, person_id=person_id,
                        captions=captions, split=map_split(raw_split), regions=regions)


def parse_annotation_file(annotation_file: str | Path, image_dir: str | Path, path_key: str,
                          check_images: bool = True) -> list[PersonRecord]:
    """Reads a per-image JSON annotation list into records, in file order.

    Args:
        image_dir: the folder the records' image paths (under ``path_key``) are relative to.
        check_images: when true, every image must exist (checked up front, not mid-epoch).
    """
    annotation_file = Path(annotation_file).resolve()
    image_dir = Path(image_dir).resolve()
    try:
        raw_records = json.loads(read_utf8(annotation_file))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{annotation_file}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise DatasetFormatError(f"{annotation_file}: not valid JSON (nested too deeply)") from error
    if not isinstance(raw_records, list):
        raise DatasetFormatError(
            f"{annotation_file}: expected a JSON list of records at the top level, got {type(raw_records).__name__}")
    if not raw_records:
        raise DatasetFormatError(f"{annotation_file}: the record list is empty")
    records = [parse_record(r, i, annotation_file, image_dir, path_key) for i, r in enumerate(raw_records)]
    unusual_splits = Counter(r["split"] for r in raw_records if r["split"] not in SPLITS)
    if unusual_splits:
        logger.warning("%s: split values %s are not train/val/test; treated as 'val'",
                       annotation_file, dict(unusual_splits))
    missing = [str(r.image_path) for r in records if not os.path.isfile(r.image_path)] if check_images else []
    if missing:
        raise DataError(
            f"{len(missing)} of {len(records)} images listed in {annotation_file} are missing on disk; "
            f"first {min(len(missing), _MISSING_SHOWN)}: {', '.join(missing[:_MISSING_SHOWN])}")
    for split in SPLITS:  # the statistics IRRA prints
        subset = [r for r in records if r.split == split]
        logger.info("%s %s: %d ids, %d images, %d captions", annotation_file, split,
                    len({r.person_id for r in subset}), len(subset), sum(len(r.captions) for r in subset))
    return records


def locate_dataset_files(dataset_dir: str | Path, annotation_names: tuple[str, ...]) -> tuple[Path, Path]:
    """Returns a dataset's absolute ``(annotation_file, image_dir)``, failing with what to put where.

    ``annotation_names`` are the accepted annotation file names, in order of preference.
    """
    dataset_dir = Path(dataset_dir).resolve()
    expected = " or ".join(annotation_names)
    if not dataset_dir.is_dir():
        raise DataError(f"dataset folder not found: {dataset_dir} (expected {expected} and imgs/ there)")
    present = [dataset_dir / name for name in annotation_names if (dataset_dir / name).is_file()]
    if not present:
        raise DataError(f"annotation file not found in {dataset_dir}: expected {expected}")
    if len(present) > 1:
        logger.warning("%s: several annotation files present; reading %s, ignoring %s",
                       dataset_dir, present[0].name, ", ".join(p.name for p in present[1:]))
    image_dir = dataset_dir / "imgs"
    if not image_dir.is_dir():
        raise DataError(
            f"image folder not found: {image_dir} (expected the images listed in {present[0].name} under imgs/)")
    return present[0], image_dir
