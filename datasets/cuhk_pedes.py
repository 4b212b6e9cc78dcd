"""CUHK-PEDES reader: ``reid_raw.json`` (records with ``file_path``) and images under ``imgs/``."""
from __future__ import annotations

from pathlib import Path

from datasets.records import PersonRecord, locate_dataset_files, parse_annotation_file
from utils.errors import DataError

ANNOTATION_FILE = "reid_raw.json"
# What the licence e-mail often delivers instead; it has no ``split`` field.
SPLITLESS_ANNOTATION_FILE = "caption_all.json"


def read_cuhk_pedes(dataset_dir: str | Path, check_images: bool = True) -> list[PersonRecord]:
    """Reads CUHK-PEDES (also the synthetic set's format); with ``check_images`` every listed image must exist."""
    dataset_dir = Path(dataset_dir).resolve()
    if not (dataset_dir / ANNOTATION_FILE).is_file() and (dataset_dir / SPLITLESS_ANNOTATION_FILE).is_file():
        raise DataError(
            f"{ANNOTATION_FILE} not found in {dataset_dir}; {SPLITLESS_ANNOTATION_FILE} is there but lacks the "
            f"'split' field, so the official train/val/test split cannot be rebuilt from it: put the "
            f"CUHK-PEDES {ANNOTATION_FILE} (same records with 'split') in that folder")
    annotation_file, image_dir = locate_dataset_files(dataset_dir, (ANNOTATION_FILE,))
    return parse_annotation_file(annotation_file, image_dir, path_key="file_path", check_images=check_images)
