"""Dataset registry: name → (folder under the data root, reader), and how each dataset's training photos are made."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.icfg_pedes import read_icfg_pedes
from datasets.person_search import ImageLoader, read_photo
from datasets.records import PersonRecord
from datasets.rstpreid import read_rstpreid
from datasets.synthetic.fresh import FreshRenders
from datasets.synthetic.prepare import ensure_generated
from utils.config_schema import SyntheticConfig
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
    """The folder dataset ``name`` (a key of :data:`DATASETS`) is read from: ``data_root / <its folder name>``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    return Path(data_root) / DATASETS[name][0]


def load_records(name: str, data_root: str | Path, check_images: bool = True,
                 synthetic: SyntheticConfig | None = None) -> list[PersonRecord]:
    """Reads a registered dataset's records (``name`` and ``data_root`` as for :func:`dataset_dir`).

    Args:
        check_images: when true, every listed image must exist.
        synthetic: the ``data.synthetic`` settings; with them the synthetic folder is generated when missing
            and refused when it was generated with other settings (without them it is read as it is).
    """
    folder = dataset_dir(name, data_root)
    if name == "synthetic" and synthetic is not None:
        ensure_generated(folder, synthetic)
    return DATASETS[name][1](folder, check_images=check_images)


def training_image_loader(name: str, data_root: str | Path, synthetic: SyntheticConfig | None = None) -> ImageLoader:
    """How a dataset's training photos are made: the file on disk, or for the synthetic set with
    ``fresh_renders`` the recorded person drawn anew for every (epoch, sample). Arguments as for :func:`load_records`.
    """
    if name == "synthetic" and synthetic is not None and synthetic.fresh_renders:
        return FreshRenders(dataset_dir(name, data_root))
    return read_photo
