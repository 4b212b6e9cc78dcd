"""A run folder belongs to one run: a lock against a second live run, resume only with the same training
settings, and a finished run is never overwritten.

:func:`claim_run_folder` is called by training before anything is written into ``train.output_dir``:

- ``train.lock`` (pid, host, process start, time) refuses a second live run; a lock left by a dead process
  on this host is taken over with a warning. A lock from another host cannot be checked and is refused.
- A folder holding ``results.json`` is finished: the same training settings are not trained again (the
  stored results are returned; ``eval.bash`` re-evaluates), other settings need a new folder.
- A folder holding checkpoints is continued only by ``train.resume=auto`` and only when every setting that
  changes training equals the stored one (``config.yaml``, else the config in ``last.pth``).
- Under torchrun rank 0 decides all of this, including which checkpoint to resume from, and every other rank
  checks that it sees rank 0's lock: on several nodes the folder must be one shared file system.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from utils.checkpoint import load_checkpoint
from utils.config import Config, config_to_dict
from utils.dist import all_gather_object, broadcast_from_main, get_rank, is_main_process
from utils.errors import RunFolderError

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
RESULTS_NAME = "results.json"
CHECKPOINT_NAMES = ("last.pth", "best.pth")
COMPARED_SECTIONS = ("model", "data", "loss", "optim", "train")
# Settings that do not change what training computes (compile and checkpointing: only speed and memory).
FREE_KEYS = frozenset({"data.num_workers", "train.output_dir", "train.resume", "train.log_every", "train.eval_every",
                       "train.save_every_steps", "train.device", "train.max_nonfinite_steps", "train.compile",
                       "train.grad_checkpointing"})


def _process_start(pid: int) -> str | None:
    """The kernel's start tick of ``pid`` (tells a reused pid apart), or None where /proc is absent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs (and is the same process, not a reused pid)."""
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    start = _process_start(owner["pid"])
    return start is None or owner.get("pid_start") in (None, start)


class RunLock:
    """``folder/train.lock`` held by this process; :meth:`release` removes it."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Creates the lock file, taking over a stale one; :class:`RunFolderError` if another live process (or
        one on another host) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host": socket.gethostname(),
                 "started": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._remove_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            self.held = True
            return
        self._remove_if_stale()  # lost a race: report whoever holds it now

    def _remove_if_stale(self) -> None:
        try:
            other = json.loads(self.path.read_text())
            described = f"pid {other['pid']} on {other['host']}, started {other['started']}"
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):  # half-written or foreign: its writer died mid-write
            other, described = None, "unreadable contents"
        if other is not None and other["host"] != socket.gethostname():
            raise RunFolderError(f"{self.path.parent} is locked by a run on another machine ({described}); if that "
                                 f"run has ended, delete {self.path}, or choose another train.output_dir")
        if other is not None and _alive(other):
            raise RunFolderError(f"{self.path.parent} is in use by another run ({described}); wait for it, stop "
                                 f"it, or choose another train.output_dir")
        log.warning("taking over the stale lock %s (%s: that process has ended)", self.path, described)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1e-5}}`` -> ``{"optim.lr": 1e-5}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def training_differences(stored: dict, current: dict) -> list[str]:
    """``"key: stored X, now Y"`` for each setting that changes training and differs (config dicts); keys present
    on one side only (a config written by another code version) are not compared."""
    old, new = flatten(stored), flatten(current)
    return [f"{key}: stored {old[key]!r}, now {new[key]!r}" for key in new
            if key.split(".")[0] in COMPARED_SECTIONS and key not in FREE_KEYS and key in old and old[key] != new[key]]


def stored_config(folder: Path) -> dict | None:
    """The config of the run in ``folder``: its ``config.yaml``, else the one in ``last.pth``; None if neither."""
    if (folder / "config.yaml").is_file():
        return YAML(typ="safe").load((folder / "config.yaml").read_text())
    if (folder / "last.pth").is_file():
        return load_checkpoint(folder / "last.pth").get("config")
    return None


def check_folder(config: Config, folder: Path) -> dict | None:
    """Refuses (:class:`RunFolderError`) a finished run with other settings or checkpoints this config may not
    continue in ``folder``; returns the stored results when this run already finished."""
    current = config_to_dict(config)
    stored = stored_config(folder)
    differences = training_differences(stored, current) if stored is not None else []
    listed = "".join(f"\n  {line}" for line in differences)
    if (folder / RESULTS_NAME).is_file():
        if stored is None or differences:
            raise RunFolderError(f"{folder} holds a finished run with other settings:{listed or ' (unknown)'}\n"
                                 f"train into a new train.output_dir")
        return json.loads((folder / RESULTS_NAME).read_text())
    checkpoints = [name for name in CHECKPOINT_NAMES if (folder / name).is_file()]
    if not checkpoints:
        return None
    resume = config.train.resume
    if resume != "auto" and Path(resume).resolve() != (folder / "last.pth").resolve():
        raise RunFolderError(f"{folder} holds checkpoints of an unfinished run ({', '.join(checkpoints)}); continue "
                             f"it with train.resume=auto, or choose another train.output_dir")
    if differences:
        raise RunFolderError(f"{folder} holds an unfinished run with other settings; resuming would change them:"
                             f"{listed}\nrestore those values to continue it, or choose another train.output_dir")
    return None


def resume_checkpoint(config: Config, folder: Path) -> Path | None:
    """The checkpoint ``train.resume`` continues from: ``folder/last.pth`` if present for ``auto``, a given
    path, or None (a fresh start)."""
    if config.train.resume != "auto":
        return Path(config.train.resume) if config.train.resume else None
    last = folder / "last.pth"
    return last if last.is_file() else None


@dataclass
class RunFolder:
    """A claimed output folder: its lock (rank 0), the checkpoint to resume from (decided by rank 0) and, when
    the same run already finished, its results."""

    path: Path
    lock: RunLock | None = None
    finished_results: dict | None = None
    resume_from: Path | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def unshared_folder_problem(folder: Path, lock_text: str, resume_from: Path | None) -> str | None:
    """Why this rank cannot use rank 0's ``folder`` (its lock holding ``lock_text``, the checkpoint
    ``resume_from``), or None. Finds an output folder that is not one shared file system across nodes."""
    lock = folder / LOCK_NAME
    try:
        seen = lock.read_text()
    except OSError:
        seen = None
    where = f"rank {get_rank()} on {socket.gethostname()}"
    if seen != lock_text:
        return (f"{where} does not see the {LOCK_NAME} that rank 0 wrote in {folder}: train.output_dir must be one "
                f"folder shared by every node (a network file system), since all ranks resume from and test the "
                f"checkpoints rank 0 saves there")
    if resume_from is not None and not resume_from.is_file():
        return f"{where} cannot read {resume_from}, the checkpoint rank 0 resumes from; make it visible on every node"
    return None


def claim_run_folder(config: Config, folder: str | Path) -> RunFolder:
    """Locks ``folder`` for this run and checks it, before anything is written there (see the module docstring).
    Every rank calls it, and all raise the same :class:`RunFolderError` or resume the same file."""
    claimed, error, lock_text = RunFolder(Path(folder)), None, ""
    if is_main_process():
        claimed.lock = RunLock(folder)
        try:
            claimed.lock.acquire()
            claimed.finished_results = check_folder(config, claimed.path)
            claimed.resume_from = resume_checkpoint(config, claimed.path)
            lock_text = claimed.lock.path.read_text()
        except RunFolderError as refused:
            claimed.release()
            error = str(refused)
    error, finished, resume_from, lock_text = broadcast_from_main(
        (error, claimed.finished_results is not None, claimed.resume_from and str(claimed.resume_from), lock_text))
    if error is None and not is_main_process():
        claimed.resume_from = resume_from and Path(resume_from)
        error = unshared_folder_problem(claimed.path, lock_text, claimed.resume_from)
    error = next((e for e in all_gather_object(error) if e is not None), None)  # the first rank's problem, for all
    if error is not None:
        claimed.release()
        raise RunFolderError(error)
    if finished and claimed.finished_results is None:  # other ranks only need to know
        claimed.finished_results = {}
    return claimed
