"""Each ablation config differs from its base only in the loss keys it names (and its output folder)."""
from pathlib import Path

import pytest

from utils.config import config_to_dict, load_config

EXPECTED = {
    "global_only": {"loss.itm.weight": 0.0, "loss.atp.weight": 0.0, "loss.ara.weight": 0.0},
    "no_atp": {"loss.atp.weight": 0.0},
    "no_ara": {"loss.ara.weight": 0.0},
    "atp_adaptive": {"loss.atp.mode": "adaptive"},
    "ara_phrase": {"loss.ara.mode": "phrase", "loss.ara.prob": 0.8},
}


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_differs_only_in_loss_keys(name):
    base = flatten(config_to_dict(load_config("configs/cuhk_pedes.yaml")))
    ablation = flatten(config_to_dict(load_config(Path("configs/ablations") / f"{name}.yaml")))
    changed = {key: ablation[key] for key in base if ablation[key] != base[key]}
    assert changed == {**EXPECTED[name], "train.output_dir": f"outputs/ablations/{name}"}


def test_every_ablation_file_is_covered():
    assert {p.stem for p in Path("configs/ablations").glob("*.yaml")} == set(EXPECTED)
