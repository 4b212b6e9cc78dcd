"""Checkpoint I/O faults: unreadable files are named with what was found, a full disk keeps the previous
checkpoint and no temp file, stale temp files of dead writers are removed, and our checkpoints load into a
model of another image size with the position table resized."""
import errno
import logging
import os
import subprocess
import sys
import uuid

import pytest
import torch

import utils.checkpoint as checkpoint_module
from models.cada_backbone import CADABackbone
from models.checkpoint_import import CheckpointMismatchError, load_pretrained
from models.registry import get_model_spec
from models.vit import interpolate_pos_embed
from utils.checkpoint import load_checkpoint, remove_stale_temp_files, require_keys, save_atomic
from utils.config import config_to_dict, load_config
from utils.errors import CheckpointError

OLD_STATE = {"model": {"w": torch.full((3,), 7.0)}, "step": 5}


class NotAllowed:
    """A class weights-only loading refuses to rebuild."""


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*absent\.pth \(no such file\)"):
        load_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty checkpoint .*empty\.pth: the file has 0 bytes"):
        load_checkpoint(tmp_path / "empty.pth")


def test_text_and_other_binary_files_say_what_they_are(tmp_path):
    (tmp_path / "notes.pth").write_text("epoch: 3\nlr: 1e-5\n")
    with pytest.raises(CheckpointError, match=r"unreadable checkpoint .*notes\.pth: found a text file \(18 bytes\) "
                                              r"starting 'epoch: 3\\nlr: 1e-5'; expected a complete file"):
        load_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match=r"noise\.pth: found 256 bytes of other binary data starting 00 01 02"):
        load_checkpoint(tmp_path / "noise.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_named_with_its_format(tmp_path, legacy):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[:600])
    kind = "legacy torch file" if legacy else "zip archive"
    with pytest.raises(CheckpointError, match=rf"unreadable checkpoint .*cut\.pth: found a {kind} of 600 bytes "
                                              "that is truncated or corrupt"):
        load_checkpoint(path)


def test_python_objects_are_refused_by_weights_only_loading(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match=r"unsafe checkpoint .*pickled\.pth: .*weights-only loading refuses "
                                              r"\(Unsupported global: .*NotAllowed"):
        load_checkpoint(path)


def test_required_keys_are_checked_and_listed(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weights": {}, "epoch": 2}, path)
    with pytest.raises(CheckpointError, match=r"foreign checkpoint .*weights\.pth: no 'model' entry; "
                                              r"found keys \[epoch, weights\]"):
        load_checkpoint(path, required=("model",))
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match=r"weights\.pth: found a Tensor, expected a dict with keys \['model'\]"):
        load_checkpoint(path, required=("model",))
    require_keys({"model": {}, "step": 1}, ("model", "step"), path)  # all present: no error
    torch.save(OLD_STATE, path)
    assert load_checkpoint(path, required=("model", "step"))["step"] == 5


def _assert_disk_full_kept_old(tmp_path, error: CheckpointError, old_bytes: bytes) -> None:
    last = tmp_path / "last.pth"
    assert f"failed to save checkpoint {last}: No space left on device" in str(error)
    assert "MiB free there; the previous checkpoint is unchanged" in str(error)
    assert last.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temp file left


def test_disk_full_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "last.pth"
    save_atomic(OLD_STATE, last)
    old_bytes = last.read_bytes()
    written = []

    class FillingFile:
        """A real file that runs out of space after 100 kB."""

        def __init__(self, file):
            self.file = file

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            if sum(written) + len(data) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(len(data))
            return self.file.write(data)

    monkeypatch.setattr(checkpoint_module, "open", lambda *args: FillingFile(open(*args)),  # noqa: SIM115
                        raising=False)
    with pytest.raises(CheckpointError) as caught:
        save_atomic({"model": {"w": torch.ones(256, 1024)}}, last)  # 1 MB
    assert sum(written) > 0  # it failed mid-way, not before writing
    _assert_disk_full_kept_old(tmp_path, caught.value, old_bytes)


def test_disk_full_on_a_real_small_tmpfs(tmp_path):
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the monkeypatched test covers it")
    try:
        last = mount_point / "last.pth"
        save_atomic(OLD_STATE, last)
        old_bytes = last.read_bytes()
        with pytest.raises(CheckpointError) as caught:
            save_atomic({"model": {"w": torch.ones(1024, 1024)}}, last)  # 4 MB into 1 MB
        _assert_disk_full_kept_old(mount_point, caught.value, old_bytes)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pth.tmp-{dead.pid}"
    live = tmp_path / f".best.pth.tmp-{os.getpid()}"  # this process may still be writing it
    other = tmp_path / ".notes.tmp-draft"  # not our pattern
    for path in (stale, live, other):
        path.write_bytes(b"x" * 1000)
    with caplog.at_level(logging.INFO, logger="utils.checkpoint"):
        assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    assert f"removed {stale}" in caplog.text and f"process {dead.pid}, which is no longer running" in caplog.text
    assert remove_stale_temp_files(tmp_path / "absent") == []


TINY = get_model_spec("cada_tiny")


def _our_checkpoint(tmp_path, image_size, with_config=True):
    torch.manual_seed(0)
    model = CADABackbone(TINY, image_size)
    state = {"model": model.state_dict()}
    if with_config:  # what our trainer stores: the resolved config
        config = load_config("configs/synthetic.yaml", [f"model.image_size=[{image_size[0]},{image_size[1]}]"])
        state["config"] = config_to_dict(config)
    path = tmp_path / "best.pth"
    save_atomic(state, path)
    return path, model.state_dict()


@pytest.mark.parametrize("trained, evaluated, grids", [((64, 32), (32, 32), ((4, 2), (2, 2))),
                                                       ((48, 48), (64, 32), ((3, 3), (4, 2)))])
def test_our_checkpoint_loads_at_another_image_size(tmp_path, caplog, trained, evaluated, grids):
    path, saved = _our_checkpoint(tmp_path, trained)
    model = CADABackbone(TINY, evaluated)
    with caplog.at_level(logging.INFO, logger="models.checkpoint_import"):
        load_pretrained(model, path, allow_missing=())
    source, target = grids
    expected = interpolate_pos_embed(saved["visual_encoder.pos_embed"], target, source)
    loaded = model.state_dict()
    assert loaded["visual_encoder.pos_embed"].shape == (1, 1 + target[0] * target[1], TINY.vision_width)
    assert torch.equal(loaded["visual_encoder.pos_embed"], expected)
    assert all(torch.equal(value, saved[key]) for key, value in loaded.items() if key != "visual_encoder.pos_embed")
    assert (f"visual_encoder.pos_embed resized from the checkpoint's {source[0]}x{source[1]} patch grid to the "
            f"model's {target[0]}x{target[1]}") in caplog.text


def test_same_size_loads_unchanged_and_non_square_without_config_is_named(tmp_path, caplog):
    path, saved = _our_checkpoint(tmp_path, (64, 32))
    model = CADABackbone(TINY, (64, 32))
    with caplog.at_level(logging.INFO, logger="models.checkpoint_import"):
        load_pretrained(model, path, allow_missing=())
    assert torch.equal(model.state_dict()["visual_encoder.pos_embed"], saved["visual_encoder.pos_embed"])
    assert "resized" not in caplog.text
    path, _ = _our_checkpoint(tmp_path, (64, 32), with_config=False)
    with pytest.raises(CheckpointMismatchError, match=r"best\.pth.*8 patch rows are not a square grid and the "
                                                      r"checkpoint stores no image size; pass source_grid"):
        load_pretrained(CADABackbone(TINY, (32, 32)), path, allow_missing=())


def draws() -> tuple:
    import random

    import numpy as np
    return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_rng_states_are_plain_tensors_that_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from utils.checkpoint import rng_state, set_rng_state
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in both generators
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert all(isinstance(value, torch.Tensor) for value in state.values())  # no pickled numpy or Python objects
    expected = draws()
    save_atomic({"rng": [state]}, tmp_path / "rng.pth")
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0], cpu)  # weights_only loading
    assert draws() == expected


def test_resume_on_another_process_count_reseeds_and_says_so(caplog):
    from utils.checkpoint import resume_rng_states, rng_state
    cpu = torch.device("cpu")
    torch.manual_seed(5)
    saved = rng_state(cpu)
    expected = draws()
    assert resume_rng_states([saved], cpu, seed=42, step=7)  # same process count: exact
    assert draws() == expected and not caplog.records
    reseeded = []
    older_format = {**saved, "python": saved["python"].tolist()}
    for states in ([saved, saved], [older_format]):  # two processes' states; an older format
        assert not resume_rng_states(states, cpu, seed=42, step=7)
        reseeded.append(draws())
    assert reseeded[0] == reseeded[1] != expected  # fresh streams, a function of (seed, step, rank)
    messages = [record.getMessage() for record in caplog.records]
    assert "random-generator states of 2 process(es), this run has 1" in messages[0]
    assert all("re-seeded, so this resumed run is not bit-exact" in message for message in messages)
