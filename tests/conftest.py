"""Shared test fixtures: a tiny model trained once per session on a tiny synthetic set (tests/configs/tiny.yaml).

``scripts/test.bash`` runs the suite in one process per core (pytest-xdist, ``--dist loadfile``): each test module
stays in one process, so its module fixtures are built once, and the longest modules are handed out first.
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
# about a minute or more each on two CPU cores, longest first; the other modules follow in file order
LONGEST_MODULES = ("test_retrieve_trained", "test_benchmarks", "test_distributed_training", "test_release_grads",
                   "test_resume", "test_faults", "test_distributed")


def pytest_collection_modifyitems(items):
    """The longest modules first, the others in file order."""
    def module(item) -> str:
        return item.module.__name__.rsplit(".", 1)[-1]

    items.sort(key=lambda item: LONGEST_MODULES.index(module(item)) if module(item) in LONGEST_MODULES
               else len(LONGEST_MODULES))


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
