"""ICFG-PEDES reader: ``ICFG-PEDES.json`` (what the code of IRRA and others opens) or ``ICFG_PEDES.json``
(what several READMEs draw), records with ``file_path``, images under ``imgs/``. There is no val split."""
from __future__ import annotations

from pathlib import Path

from datasets.records import PersonRecord, locate_dataset_files, parse_annotation_file

ANNOTATION_FILES = ("ICFG-PEDES.json", "ICFG_PEDES.json")


def read_icfg_pedes(dataset_dir: str | Path, check_images: bool = True) -> list[PersonRecord]:
    """Reads ICFG-PEDES; with ``check_images`` every listed image must exist."""
    annotation_file, image_dir = locate_dataset_files(dataset_dir, ANNOTATION_FILES)
    return parse_annotation_file(annotation_file, image_dir, path_key="file_path", check_images=check_images)
