"""Shared test fixtures: a tiny model trained once per session on a tiny synthetic set (tests/configs/tiny.yaml)."""
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


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
    """A finished run of the tests' config (``tests/configs/tiny.yaml``): its folder, best checkpoint, data root,
    the overrides used and the results."""

    output_dir: Path
    checkpoint: Path
    data_root: Path
    overrides: list[str]
    results: dict


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    from engine.trainer import train
    from tests.helpers import tiny_config
    from utils.config import load_config

    base = tmp_path_factory.mktemp("trained")
    path, overrides = tiny_config(base / "data", base / "run")
    results = train(load_config(path, overrides))
    return TrainedRun(base / "run", base / "run" / "best.pth", base / "data", overrides, results)
