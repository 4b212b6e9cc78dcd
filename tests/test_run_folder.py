"""A run folder belongs to one run: the lock, the settings a resumed run may change, finished runs kept."""
import json
import signal
import socket
import subprocess
import sys

import pytest
import torch

from tests.helpers import TINY_CONFIG, run_two
from utils.checkpoint import save_atomic
from utils.config import config_to_dict, dump_config, load_config
from utils.errors import RunFolderError
from utils.run_folder import (
    LOCK_NAME,
    RunLock,
    check_folder,
    claim_run_folder,
    training_differences,
    unshared_folder_problem,
)

HOLDER = """
import sys, time
from utils.run_folder import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def tiny(*overrides: str):
    return load_config(TINY_CONFIG, list(overrides))


def test_a_live_lock_refuses_and_a_dead_ones_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": "."})
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the holder died without releasing: stale
    assert f"taking over the stale lock {tmp_path / LOCK_NAME}" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != holder.pid
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused_naming_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2024-01-01T00:00:00"}))
    with pytest.raises(RunFolderError, match=rf"another machine \(pid 1 on elsewhere.*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_a_half_written_lock_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held


def test_only_settings_that_change_training_are_compared():
    stored = config_to_dict(tiny())
    changed = config_to_dict(tiny(
        "optim.lr=0.001", "data.global_batch_size=8", "loss.ara.weight=0.5",  # change training
        "data.num_workers=0", "train.log_every=1", "train.eval_every=2", "train.save_every_steps=5",
        "train.output_dir=elsewhere", "train.resume=", "train.device=cpu", "eval.k_test=4", "eval.batch_size=8"))
    assert training_differences(stored, changed) == [
        "data.global_batch_size: stored 16, now 8", "loss.ara.weight: stored 1.0, now 0.5",
        "optim.lr: stored 0.0005, now 0.001"]


def test_a_finished_run_is_returned_or_refused(tmp_path):
    config = tiny(f"train.output_dir={tmp_path}")
    dump_config(config, tmp_path / "config.yaml")
    (tmp_path / "results.json").write_text(json.dumps({"stages": {"global": {"R1": 12.5}}}))
    assert check_folder(tiny("eval.k_test=4"), tmp_path) == {"stages": {"global": {"R1": 12.5}}}
    stored_epochs = config.train.epochs
    expected = (rf"(?s)finished run with other settings:\n  train.epochs: stored {stored_epochs}, "
                rf"now {stored_epochs + 1}\ntrain into a new train.output_dir")
    with pytest.raises(RunFolderError, match=expected):
        check_folder(tiny(f"train.epochs={stored_epochs + 1}"), tmp_path)


def test_checkpoints_are_continued_only_by_auto_resume_with_the_same_settings(tmp_path):
    config = tiny()
    save_atomic({"model": {"w": torch.zeros(1)}, "config": config_to_dict(config)}, tmp_path / "last.pth")
    assert check_folder(config, tmp_path) is None  # no config.yaml: the checkpoint's config is compared
    with pytest.raises(RunFolderError, match=r"(?s)resuming would change them:\n  optim.lr: stored 0.0005, now 0.01"):
        check_folder(tiny("optim.lr=0.01"), tmp_path)
    with pytest.raises(RunFolderError, match=r"checkpoints of an unfinished run \(last.pth\).*train.resume=auto"):
        check_folder(tiny("train.resume="), tmp_path)
    assert check_folder(tiny(f"train.resume={tmp_path / 'last.pth'}"), tmp_path) is None


def test_claim_releases_the_lock_when_refused(tmp_path):
    dump_config(tiny(), tmp_path / "config.yaml")
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunFolderError):
        claim_run_folder(tiny("optim.lr=1"), tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
    claimed = claim_run_folder(tiny(), tmp_path)
    assert claimed.finished_results == {} and (tmp_path / LOCK_NAME).exists()
    claimed.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_rank_zero_chooses_the_checkpoint_to_resume(tmp_path):
    claimed = claim_run_folder(tiny(), tmp_path)
    assert claimed.resume_from is None  # a fresh start
    claimed.release()
    save_atomic({"model": {}, "config": config_to_dict(tiny())}, tmp_path / "last.pth")
    claimed = claim_run_folder(tiny(), tmp_path)
    assert claimed.resume_from == tmp_path / "last.pth"
    claimed.release()


def test_a_folder_other_ranks_cannot_see_is_named(tmp_path):
    claimed = claim_run_folder(tiny(), tmp_path / "shared")
    lock_text = (tmp_path / "shared" / LOCK_NAME).read_text()
    assert unshared_folder_problem(tmp_path / "shared", lock_text, None) is None
    assert "cannot read" in unshared_folder_problem(tmp_path / "shared", lock_text, tmp_path / "shared" / "last.pth")
    problem = unshared_folder_problem(tmp_path / "local_disk", lock_text, None)  # another node's own disk
    assert f"does not see the {LOCK_NAME} that rank 0 wrote" in problem and "shared by every node" in problem
    claimed.release()


def claim_on_own_disk(rank: int, port: int, folder: str) -> None:
    """Rank r claims ``folder/node<r>``: two nodes whose train.output_dir is not one shared folder."""
    import os
    from pathlib import Path

    from utils.dist import cleanup, init_distributed
    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("cpu")
    try:
        claim_run_folder(tiny(), Path(folder) / f"node{rank}")
    except RunFolderError as error:
        (Path(folder) / f"error{rank}.txt").write_text(str(error))
    finally:
        cleanup()  # as train.py does; a process group left open can abort the process at exit


@pytest.mark.slow
def test_an_unshared_output_folder_stops_every_rank_with_one_line(tmp_path):
    run_two(claim_on_own_disk, tmp_path)
    errors = [(tmp_path / f"error{rank}.txt").read_text() for rank in range(2)]
    assert errors[0] == errors[1] and "rank 1 on" in errors[0] and "shared by every node" in errors[0]
    assert not (tmp_path / "node0" / LOCK_NAME).exists()  # released by rank 0
