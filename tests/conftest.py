"""Shared test fixtures: a tiny model trained once per session on a tiny synthetic set."""
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

TINY_OVERRIDES = [
    "data.synthetic_ids=40", "data.global_batch_size=16", "data.instances_per_id=2", "data.num_workers=0",
    "train.epochs=3", "train.eval_every=1", "train.log_every=5", "optim.warmup_steps=5",
    "eval.batch_size=32", "eval.k_test=4", "loss.local_start_step=5", "loss.local_warmup_steps=5",
    "data.synthetic_extra_train_ids=0", "loss.ara.weight=1.0",  # tests cover all four terms (the recipe has no ARA)
]


@pytest.fixture(autouse=True)
def keep_logging_handlers():
    """The entry points install their own root-logger handlers; put pytest's back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclass
class TrainedRun:
    """A finished ``train.py`` run: its folder, best checkpoint, data root and the overrides used."""

    output_dir: Path
    checkpoint: Path
    data_root: Path
    overrides: list[str]
    results: dict


def tiny_overrides(root: Path, output_dir: Path) -> list[str]:
    return [f"data.root={root}", f"train.output_dir={output_dir}", *TINY_OVERRIDES]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    from engine.trainer import train
    from utils.config import load_config

    base = tmp_path_factory.mktemp("trained")
    overrides = tiny_overrides(base / "data", base / "run")
    results = train(load_config("configs/synthetic.yaml", overrides))
    return TrainedRun(base / "run", base / "run" / "best.pth", base / "data", overrides, results)
