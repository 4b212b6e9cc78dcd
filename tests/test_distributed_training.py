"""The multi-process path as users run it: ``train.py`` under torchrun (gloo, two CPU processes).

One module fixture runs, on one tiny synthetic set, an uninterrupted two-process run alongside a second
two-process run (two jobs on one machine: ``--standalone`` picks free ports) that is stopped by SIGTERM to
torchrun mid-epoch; the stopped run is then resumed with two processes (bit-exact with the uninterrupted one
at one intra-op thread) and, from a copy, with one process (continues, random streams re-seeded); a
one-process run stopped the same way is resumed with two.
"""
import os
import shutil
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
from utils.checkpoint import load_checkpoint
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# 8 training people x 4 images x 2 captions = 64 pairs: one epoch of 8 steps of 8 pairs; multinomial negatives
# draw from the global torch generator, so an exact resume needs every rank's restored random state
STEPS = 8
OVERRIDES = ("model.image_size=[64,32]", "data.synthetic.train_ids=8", "data.synthetic.val_ids=2",
             "data.synthetic.test_ids=4", "data.global_batch_size=8", "train.epochs=1", "train.save_every_steps=2",
             "loss.itm.negatives=multinomial", "loss.local_start_step=3", "eval.k_test=2")
# one intra-op thread: multi-threaded CPU kernels are not bitwise reproducible from one process to the next
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RESEEDED = "random streams (dropout, augmentation draws, multinomial negatives) are re-seeded"
TIMEOUT = 600


def command(processes: int, data: Path, output_dir: Path) -> list[str]:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, str(ROOT / "train.py"), *tiny_arguments(data, output_dir, *OVERRIDES)]


def start(processes: int, data: Path, output_dir: Path) -> subprocess.Popen:
    log = open(output_dir.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command(processes, data, output_dir), cwd=ROOT, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, output_dir: Path) -> str:
    """Waits for a run; returns its console output (asserting success)."""
    process.wait(timeout=TIMEOUT)
    output = output_dir.with_suffix(".log").read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def stop_mid_epoch(process: subprocess.Popen, output_dir: Path) -> dict:
    """SIGTERM to the launcher once a mid-epoch checkpoint exists; returns the train state it saves on stopping."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        path = output_dir / "last.pth"
        if path.is_file():
            state = load_checkpoint(path)["train_state"]
            if state["epoch"] == 0 and state["batch"] > 0:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=TIMEOUT)
                assert process.returncode != 0 and not (output_dir / "results.json").exists()
                assert "SIGTERM received" in output_dir.with_suffix(".log").read_text()
                return load_checkpoint(path)["train_state"]
        assert process.poll() is None, output_dir.with_suffix(".log").read_text()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"no mid-epoch checkpoint in {output_dir}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("distributed_training")
    data = base / "data"
    config = load_config(*tiny_config(data, base / "unused", *OVERRIDES))
    ensure_generated(dataset_dir("synthetic", data), config.data.synthetic)  # once, before runs start at once
    reference = start(2, data, base / "reference")
    stopped_two = start(2, data, base / "stopped_two")
    stopped_state = stop_mid_epoch(stopped_two, base / "stopped_two")
    shutil.copytree(base / "stopped_two", base / "two_to_one")
    resumed_two, two_to_one = start(2, data, base / "stopped_two"), start(1, data, base / "two_to_one")
    logs = {"reference": finish(reference, base / "reference")}
    stopped_one = start(1, data, base / "one_to_two")
    stop_mid_epoch(stopped_one, base / "one_to_two")
    one_to_two = start(2, data, base / "one_to_two")
    for name, process in (("stopped_two", resumed_two), ("two_to_one", two_to_one), ("one_to_two", one_to_two)):
        logs[name] = finish(process, base / name)
    return {"base": base, "logs": logs, "stopped_state": stopped_state}


@pytest.mark.slow
def test_two_processes_train_to_the_end_with_results(runs):
    reference = runs["base"] / "reference"
    assert (reference / "results.json").is_file() and (reference / "best.pth").is_file()
    assert "training on device cpu" in runs["logs"]["reference"] and "2 process(es)" in runs["logs"]["reference"]
    last = load_checkpoint(reference / "last.pth")
    assert last["train_state"]["step"] == STEPS
    assert "ITM/ATP start at step 3" in runs["logs"]["reference"]  # DDP stops looking for unused parameters
    assert len(last["rng"]) == 2  # every rank's generators, as tensors
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])


@pytest.mark.slow
def test_sigterm_then_resume_with_two_processes_equals_the_uninterrupted_run(runs):
    assert RESEEDED not in runs["logs"]["stopped_two"]
    assert 0 < runs["stopped_state"]["batch"] < STEPS
    assert f"at epoch 0, batch {runs['stopped_state']['batch']}" in runs["logs"]["stopped_two"]
    resumed = load_checkpoint(runs["base"] / "stopped_two" / "last.pth")["model"]
    reference = load_checkpoint(runs["base"] / "reference" / "last.pth")["model"]
    for name, weight in reference.items():
        assert torch.equal(resumed[name], weight), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_to_one", "one_to_two"])
def test_resume_on_another_process_count_continues_and_says_the_streams_are_reseeded(runs, name):
    log = runs["logs"][name]
    assert RESEEDED in log and "Traceback" not in log
    folder = runs["base"] / name
    assert (folder / "results.json").is_file()
    last = load_checkpoint(folder / "last.pth")
    assert last["train_state"]["step"] == STEPS  # the same number of global steps as without the change
    assert len(last["rng"]) == (1 if name == "two_to_one" else 2)
