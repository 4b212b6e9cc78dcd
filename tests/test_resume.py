"""No run's work is lost: SIGKILL mid-epoch then ``train.resume=auto`` equals an uninterrupted run, bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datasets.registry import dataset_dir
from datasets.synthetic.prepare import ensure_generated
from tests.helpers import tiny_arguments, tiny_config
from utils.checkpoint import load_checkpoint, save_atomic
from utils.config import load_config

RESUME_OVERRIDES = ["train.epochs=2", "train.save_every_steps=2", "loss.itm.negatives=multinomial",
                    "data.synthetic.train_ids=21", "data.synthetic.val_ids=3",
                    "data.synthetic.test_ids=6", "data.global_batch_size=8", "train.eval_every=1"]


# One intra-op thread: torch's multi-threaded CPU kernels are not bitwise reproducible from one process to the
# next (two uninterrupted 2-thread runs already differ in the last bits), so exactness is checked at 1 thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_command(root: Path, output_dir: Path) -> list[str]:
    return [sys.executable, "train.py", *tiny_arguments(root, output_dir),
            *RESUME_OVERRIDES, "train.resume=auto"]


def wait_for_mid_epoch_checkpoint(path: Path, process: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            state = load_checkpoint(path)["train_state"]
            if state["epoch"] == 1 and state["batch"] > 0:  # inside the second epoch
                return state
        assert process.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError("no mid-epoch checkpoint appeared")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    data = tmp_path / "data"
    ensure_generated(dataset_dir("synthetic", data),  # once, before the two runs start at once
                     load_config(*tiny_config(data, tmp_path / "unused", *RESUME_OVERRIDES)).data.synthetic)
    reference_log = open(tmp_path / "reference.log", "w")  # noqa: SIM115 - closed with the process
    reference = subprocess.Popen(train_command(data, tmp_path / "reference"), stdout=subprocess.DEVNULL,
                                 stderr=reference_log, env=ENV)
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(data, interrupted), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    state = wait_for_mid_epoch_checkpoint(interrupted / "last.pth", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    assert not (interrupted / "results.json").exists()  # it really died before the end
    # training time carries over the resume: mark the checkpoint's share so the total must include it
    checkpoint = load_checkpoint(interrupted / "last.pth")
    assert 0 < checkpoint["train_state"]["train_seconds"] < 600
    checkpoint["train_state"]["train_seconds"] = 10_000.0
    save_atomic(checkpoint, interrupted / "last.pth")

    resumed = subprocess.run(train_command(data, interrupted), capture_output=True, text=True, timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and f"epoch {state['epoch']}" in resumed.stderr

    expected, actual = (load_checkpoint(run / "last.pth") for run in (tmp_path / "reference", interrupted))
    assert expected["model"].keys() == actual["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, actual["model"][key]), key
    metrics = [json.loads((run / "results.json").read_text())["stages"]
               for run in (tmp_path / "reference", interrupted)]
    assert metrics[0] == metrics[1]
    resumed_seconds = json.loads((interrupted / "results.json").read_text())["wall_time_s"]["training"]
    assert 10_000 < resumed_seconds < 10_600


KILLED_WRITER = """
import sys, torch
from utils.checkpoint import save_atomic
# 64 tensors of 4 MB written one after another: the temp file grows for a while before the rename.
save_atomic({"model": {f"w{i}": torch.ones(1024, 1024) for i in range(64)}, "step": 6}, sys.argv[1])
"""
NEW_CHECKPOINT_BYTES = 64 * 4 * 1024 * 1024


def wait_for_partial_temp_file(folder: Path, process: subprocess.Popen, min_bytes: int, timeout: float = 120) -> int:
    """Size of the writer's temp file once it holds at least ``min_bytes``; fails if the write never starts."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the writer exited before it was caught writing"
        for temp in folder.glob(".last.pth.tmp-*"):
            try:
                size = temp.stat().st_size
            except FileNotFoundError:  # renamed in between
                continue
            if size >= min_bytes:
                return size
        time.sleep(0.002)
    raise AssertionError(f"the checkpoint write never started in {folder}")


def test_kill_during_checkpoint_write_keeps_last_loadable(tmp_path):
    last = tmp_path / "last.pth"
    save_atomic({"model": {"w": torch.full((3,), 7.0)}, "step": 5}, last)
    old_bytes = last.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last)], env={**os.environ, "PYTHONPATH": "."})
    try:
        size = wait_for_partial_temp_file(tmp_path, process, min_bytes=1 << 20)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert 0 < size < NEW_CHECKPOINT_BYTES  # killed mid-write
    leftovers = list(tmp_path.glob(".last.pth.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size < NEW_CHECKPOINT_BYTES  # the rename never happened
    assert last.read_bytes() == old_bytes
    assert load_checkpoint(last)["step"] == 5
