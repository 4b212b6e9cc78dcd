"""No run's work is lost: SIGKILL mid-epoch then ``train.resume=auto`` equals an uninterrupted run, bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import tiny_overrides
from utils.checkpoint import load_checkpoint, save_atomic

RESUME_OVERRIDES = ["train.epochs=2", "train.save_every_steps=2", "loss.itm.negatives=multinomial",
                    "data.synthetic_ids=30", "data.global_batch_size=8", "train.eval_every=1"]


# One intra-op thread: torch's multi-threaded CPU kernels are not bitwise reproducible from one process to the
# next (two uninterrupted 2-thread runs already differ in the last bits), so exactness is checked at 1 thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_command(root: Path, output_dir: Path) -> list[str]:
    return [sys.executable, "train.py", "configs/synthetic.yaml", *tiny_overrides(root, output_dir),
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


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    data = tmp_path / "data"
    reference = subprocess.run(train_command(data, tmp_path / "reference"), capture_output=True, text=True,
                               timeout=600, env=ENV)
    assert reference.returncode == 0, reference.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(data, interrupted), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    state = wait_for_mid_epoch_checkpoint(interrupted / "last.pth", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "results.json").exists()  # it really died before the end

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


KILLED_WRITER = """
import sys, torch
from utils.checkpoint import save_atomic
big = {"model": {"w": torch.ones(64, 1024, 1024)}}  # 256 MB: slow enough to be killed while writing
while True:
    save_atomic(big, sys.argv[1])
"""


def test_kill_during_checkpoint_write_keeps_last_loadable(tmp_path):
    last = tmp_path / "last.pth"
    save_atomic({"model": {"w": torch.full((3,), 7.0)}, "step": 5}, last)
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last)], env={**os.environ, "PYTHONPATH": "."})
    deadline = time.time() + 120
    while not list(tmp_path.glob(".last.pth.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)  # wait until it is writing the temp file
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = load_checkpoint(last)  # loads: either the old file or a complete new one
    assert checkpoint.get("step") == 5 or checkpoint["model"]["w"].shape == (64, 1024, 1024)
