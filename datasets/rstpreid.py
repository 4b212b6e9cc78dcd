"""RSTPReid reader: ``data_captions.json`` with the image path under ``img_path`` (not ``file_path``),
images in a flat ``imgs/`` folder."""
from __future__ import annotations

from pathlib import Path

from datasets.records import PersonRecord, locate_dataset_files, parse_annotation_file

ANNOTATION_FILE = "data_captions.json"


def read_rstpreid(dataset_dir: str | Path, check_images: bool = True) -> list[PersonRecord]:
    """Reads RSTPReid; with ``check_images`` every listed image must exist."""
    annotation_file, image_dir = locate_dataset_files(dataset_dir, (ANNOTATION_FILE,))
    return parse_annotation_file(annotation_file, image_dir, path_key="img_path", check_images=check_images)
