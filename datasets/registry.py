"""Dataset registry: name → (folder under the data root, reader)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.icfg_pedes import read_icfg_pedes
from datasets.records import PersonRecord
from datasets.rstpreid import read_rstpreid
from utils.errors import ConfigError

Reader = Callable[..., list[PersonRecord]]

# The synthetic set is written in the CUHK-PEDES format, so it reuses that reader.
DATASETS: dict[str, tuple[str, Reader]] = {
    "cuhk_pedes": ("CUHK-PEDES", read_cuhk_pedes),
    "icfg_pedes": ("ICFG-PEDES", read_icfg_pedes),
    "rstpreid": ("RSTPReid", read_rstpreid),
    "synthetic": ("synthetic-pedes", read_cuhk_pedes),
}


def dataset_dir(name: str, data_root: str | Path) -> Path:
    """The folder a registered dataset is read from: ``data_root / <its folder name>``.

    Args:
        name: a key of :data:`DATASETS`.
        data_root: the folder holding one sub-folder per dataset.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    return Path(data_root) / DATASETS[name][0]


def load_records(name: str, data_root: str | Path, check_images: bool = True) -> list[PersonRecord]:
    """Reads a registered dataset's records.

    Args:
        name: a key of :data:`DATASETS`.
        data_root: the folder holding one sub-folder per dataset.
        check_images: when true, every listed image must exist.
    """
    folder = dataset_dir(name, data_root)
    return DATASETS[name][1](folder, check_images=check_images)
