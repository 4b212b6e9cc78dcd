"""Self-describing, atomic checkpoints and the RNG state of every process, for exact resume.

Saving writes ``.NAME.tmp-PID`` and renames it over ``NAME`` only when complete, so the previous checkpoint
survives a crash, a kill or a full disk; :func:`remove_stale_temp_files` clears what a killed writer leaves.
Loading is ``weights_only`` and names the file and what was found when it fails.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from utils.dist import all_gather_no_grad, collective_device, get_rank, get_world_size
from utils.errors import CheckpointError

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch's pre-1.6 format
_SNIPPET_BYTES = 40


class _ErrorKeepingFile:
    """Passes writes to ``file`` and keeps the ``OSError`` (e.g. ENOSPC) that torch would turn into
    ``RuntimeError: unexpected pos``."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def save_atomic(state: dict, path: str | Path) -> None:
    """Writes ``state`` to ``path`` via a temp file in the same folder (removed on failure) and ``os.replace``.

    A failed write (disk full, no permission, I/O error) raises :class:`CheckpointError` naming the path, the
    cause and the free space left on its file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        with open(tmp, "wb") as file:
            writer = _ErrorKeepingFile(file)
            torch.save(state, writer)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        cause = writer.error if writer is not None and writer.error is not None else error
        if not isinstance(cause, OSError):
            raise  # not an I/O failure (e.g. an object torch cannot save)
        reason = cause.strerror or str(cause)
        raise CheckpointError(f"failed to save checkpoint {path}: {reason}; {_free_space(path.parent)} free there; "
                              f"{'the previous checkpoint is unchanged' if path.exists() else 'nothing was written'}"
                              ) from cause
    except BaseException:  # Ctrl-C and the like: no half-written file is left
        tmp.unlink(missing_ok=True)
        raise


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:.1f} MiB"


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Deletes and returns the ``.NAME.tmp-PID`` files in ``folder`` whose writers no longer run (live ones stay)."""
    folder = Path(folder)
    removed = []
    for candidate in sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []:
        match = _TEMP_NAME.match(candidate.name)
        if not match or not candidate.is_file() or _process_alive(int(match["pid"])):
            continue
        size = candidate.stat().st_size
        candidate.unlink(missing_ok=True)
        log.info("removed %s (%.1f MiB), a temp file left by process %s, which is no longer running",
                 candidate, size / 2**20, match["pid"])
        removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def load_checkpoint(path: str | Path, required: Iterable[str] = ()) -> dict:
    """Opens a checkpoint (tensors and plain Python only: ``weights_only``) holding the top-level keys ``required``.

    Raises :class:`CheckpointError`, naming the file and what was found, when it is missing, empty, not a torch
    file, truncated, holds objects ``weights_only`` refuses, or lacks a required key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (no such file)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"empty checkpoint {path}: the file has 0 bytes (an interrupted copy or save?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... by format
        with open(path, "rb") as file:
            head = file.read(_SNIPPET_BYTES)
        refused = re.search(r"WeightsUnpickler error: ([^\n]*?)(\. |\.?$)", str(error), re.MULTILINE)
        if refused and head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
            raise CheckpointError(f"unsafe checkpoint {path}: it holds Python objects that weights-only loading "
                                  f"refuses ({refused[1]}); expected tensors and plain containers only") from error
        raise CheckpointError(f"unreadable checkpoint {path}: {_describe(head, size)}; "
                              "expected a complete file written by torch.save") from error
    if required:
        require_keys(checkpoint, required, path)
    return checkpoint


def require_keys(checkpoint, required: Iterable[str], path: str | Path) -> None:
    """Raises :class:`CheckpointError` (naming ``path``) unless ``checkpoint`` is a dict holding every key in
    ``required``, the top-level keys the caller reads, e.g. ``("model", "optimizer", "train_state")``."""
    required = list(required)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"foreign checkpoint {path}: found a {type(checkpoint).__name__}, "
                              f"expected a dict with keys {required}")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        found = sorted(map(str, checkpoint))
        shown = ", ".join(found[:12]) + (f", ... ({len(found)} keys)" if len(found) > 12 else "")
        raise CheckpointError(f"foreign checkpoint {path}: no {', '.join(map(repr, missing))} entry; "
                              f"found keys [{shown}]")


def _describe(head: bytes, size: int) -> str:
    """What a file of ``size`` bytes starting ``head`` looks like: a cut-off zip archive, text or other binary."""
    if head.startswith(_ZIP_MAGIC):
        return f"found a zip archive of {size} bytes that is truncated or corrupt"
    if head.startswith(_LEGACY_MAGIC):
        return f"found a legacy torch file of {size} bytes that is truncated or corrupt"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # binary, or a character cut at the end of the snippet
        text = head[:error.start].decode("utf-8") if error.start >= len(head) - 3 else None
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"found a text file ({size} bytes) starting {text.strip()!r}"
    return f"found {size} bytes of other binary data starting {head[:8].hex(' ')}"


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's generator states as fixed-size tensors: portable (no pickled objects) and gatherable.

    Python: 624 Mersenne-Twister words + position (``python``) and the cached Gaussian (``python_gauss``, NaN
    for none); numpy likewise (``numpy``: words, position, has-Gaussian flag); torch: the CPU generator's bytes
    and, on CUDA, those of ``device`` only (not every visible GPU's, so a machine with other GPUs can load it).
    """
    _, words, gauss = random.getstate()
    _, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": torch.tensor(words, dtype=torch.int64),
             "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
             "numpy": torch.tensor([*np_words.tolist(), np_pos, np_has_gauss], dtype=torch.int64),
             "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restores what :func:`rng_state` returned (``device``: this process's device)."""
    gauss = state["python_gauss"].item()
    random.setstate((3, tuple(state["python"].tolist()), None if gauss != gauss else gauss))
    *np_words, np_pos, np_has_gauss = state["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(np_words, dtype=np.uint32), np_pos, np_has_gauss,
                         state["numpy_gauss"].item()))
    torch.set_rng_state(state["torch"].clone())  # a view into a larger storage would be read from its start
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].clone(), device)


def gather_rng_states(device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's :func:`rng_state`, in rank order, as CPU tensors (a collective: call it on every rank)."""
    own = rng_state(device)
    world = get_world_size()
    if world == 1:
        return [own]
    gathered = {key: all_gather_no_grad(value[None].to(collective_device())).cpu() for key, value in own.items()}
    return [{key: rows[rank].clone() for key, rows in gathered.items()} for rank in range(world)]  # own storage


def resume_rng_states(saved, device: torch.device, seed: int, step: int) -> bool:
    """Restores this rank's generators from a checkpoint's ``rng`` list (returns True), or re-seeds them (False).

    Exact only with the same number of processes on the same kind of device. Otherwise (another world size,
    CPU vs CUDA, an older format) the run continues with streams seeded from (``seed``, ``step``, rank), and
    says so: batches, sampler position and weights do not depend on the process count.
    """
    current = rng_state(device)
    world, rank = get_world_size(), get_rank()
    if not isinstance(saved, list) or len(saved) != world:
        why = (f"holds random-generator states of {len(saved) if isinstance(saved, list) else 'no'} process(es), "
               f"this run has {world}")
    elif not all(isinstance(entry, dict) and entry.keys() == current.keys()
                 and all(isinstance(entry[k], torch.Tensor) and entry[k].shape == v.shape for k, v in current.items())
                 for entry in saved):
        why = f"holds random-generator states of another device type or format than this run's ({device.type})"
    else:
        set_rng_state(saved[rank], device)
        return True
    reseed = (seed * 1_000_003 + step) * 1_009 + rank
    random.seed(reseed)
    np.random.seed(reseed % 2**32)
    torch.manual_seed(reseed)  # CPU and every CUDA device
    log.warning("the checkpoint %s: the random streams (dropout, augmentation draws, multinomial negatives) are "
                "re-seeded, so this resumed run is not bit-exact; batches, sampler position and weights carry over",
                why)
    return False


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` when there are local changes), or ``unknown``."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
