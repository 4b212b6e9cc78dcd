"""The synthetic folder on first use: generated once (by rank 0 while the other ranks wait), then checked
against the settings that asked for it, so a run never trains on a folder made with other counts or seed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from datasets.synthetic.generate import ANNOTATION_FILE, METADATA_FILE, generate_dataset
from utils.config_schema import SyntheticConfig
from utils.dist import main_process_result
from utils.errors import DataError

log = logging.getLogger(__name__)

# The generation settings that define the folder's content, as generator.json names them.
CHECKED_SETTINGS = ("train_ids", "val_ids", "test_ids", "seed", "images_per_id")


def ensure_generated(folder: str | Path, settings: SyntheticConfig) -> None:
    """Generates the synthetic set into ``folder`` (``<data.root>/synthetic-pedes``) unless it is there, then
    refuses one made with other ``settings`` (the ``data.synthetic`` section)."""
    folder = Path(folder)

    def generate_if_missing() -> None:
        if (folder / ANNOTATION_FILE).is_file():
            return
        log.info("generating the synthetic dataset in %s (%d / %d / %d train / val / test identities)", folder,
                 settings.train_ids, settings.val_ids, settings.test_ids)
        try:
            generate_dataset(folder, settings.train_ids, settings.val_ids, settings.test_ids, seed=settings.seed,
                             images_per_id=settings.images_per_id)
        except OSError as error:
            raise DataError(f"could not write the synthetic dataset to {folder}: {error}") from error

    main_process_result(generate_if_missing)  # rank 0 writes; a failure there stops every rank, none waits
    check_settings_match(folder, settings)


def check_settings_match(folder: Path, settings: SyntheticConfig) -> None:
    """Raises :class:`DataError` when ``folder/generator.json`` records other settings than ``settings``."""
    metadata = folder / METADATA_FILE
    if not metadata.is_file():
        raise DataError(f"{metadata} not found: {folder} was not written by the synthetic generator; delete the "
                        f"folder to generate it, or point data.root elsewhere")
    written = json.loads(metadata.read_text(encoding="utf-8"))
    if differing := [name for name in CHECKED_SETTINGS if written.get(name) != getattr(settings, name)]:
        details = ", ".join(f"{name}: folder has {written.get(name, 'none')}, config wants {getattr(settings, name)}"
                            for name in differing)
        raise DataError(f"{folder} was generated with other settings ({details}); delete the folder to regenerate "
                        f"it, or point data.root elsewhere")
