"""One error style: bad inputs to the entry points end as ``error: <message>``, exit code 2, no traceback.

Each entry point runs once as a new process; the other cases call its ``main`` through ``run_main`` in this process."""
import importlib
import logging
import os
import subprocess
import sys

import pytest

from utils.cli import run_main
from utils.errors import ConfigError
from utils.run_log import setup_logging

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("CADA_DEBUG", None)


def run(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    """The entry point as a user runs it: a new Python process."""
    env = {**ENV, "CADA_DEBUG": "1"} if debug else ENV
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)


def run_here(capsys, script: str, *args: str) -> subprocess.CompletedProcess:
    """``script``'s ``main`` through :func:`run_main` in this process (what its ``__main__`` block does), as a
    finished process: exit code and stderr."""
    main = importlib.import_module(script.removesuffix(".py")).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(main, list(args))
    return subprocess.CompletedProcess(script, stop.value.code, "", capsys.readouterr().err)


def assert_user_error(completed: subprocess.CompletedProcess, *named: str) -> None:
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-2000:]
    message = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, completed.stderr[-2000:]
    for name in named:
        assert name in completed.stderr, (name, completed.stderr[-2000:])


@pytest.mark.parametrize("script", ["train.py", "eval.py", "retrieve.py"])
def test_each_entry_point_ends_a_user_error_with_one_line_and_exit_code_2(tmp_path, script):
    arguments = {"train.py": ["configs/synthetic.yaml", "optim.learning_rate=1e-4", f"train.output_dir={tmp_path}"],
                 "eval.py": [str(tmp_path / "best.pth")],
                 "retrieve.py": ["--checkpoint", "x.pth", "--gallery", str(tmp_path / "photos"), "--query", "a man"]}
    assert_user_error(run(script, *arguments[script]))


def test_train_unknown_config_key_names_the_key_and_its_source(tmp_path, capsys):
    completed = run_here(capsys, "train.py", "configs/synthetic.yaml", "optim.learning_rate=1e-4",
                         f"train.output_dir={tmp_path}")
    assert_user_error(completed, "error: unknown config key 'optim.learning_rate'", "command line", "valid keys")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_train_missing_config_file_is_named(tmp_path, capsys):
    assert_user_error(run_here(capsys, "train.py", str(tmp_path / "nope.yaml")),
                      f"config file not found: {tmp_path / 'nope.yaml'}")


def test_eval_missing_checkpoint_is_named(tmp_path, capsys):
    assert_user_error(run_here(capsys, "eval.py", str(tmp_path / "best.pth")),
                      f"checkpoint not found: {tmp_path / 'best.pth'}")


def test_compare_missing_results_file_is_named(tmp_path, capsys):
    assert_user_error(run_here(capsys, "eval.py", "--compare", str(tmp_path / "results.json")),
                      f"results file not found: {tmp_path / 'results.json'}")


def test_retrieve_missing_queries_file_and_gallery_are_named(tmp_path, capsys):
    assert_user_error(run_here(capsys, "retrieve.py", "--checkpoint", "x.pth", "--gallery", str(tmp_path),
                               "--queries-file", str(tmp_path / "q.txt")),
                      f"queries file not found: {tmp_path / 'q.txt'}")
    assert_user_error(run_here(capsys, "retrieve.py", "--checkpoint", "x.pth", "--gallery", str(tmp_path / "photos"),
                               "--query", "a man in a red coat"), f"gallery folder not found: {tmp_path / 'photos'}")


def test_debug_shows_the_traceback(monkeypatch):
    import train
    arguments = ["configs/synthetic.yaml", "optim.learning_rate=1e-4"]
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        run_main(train.main, [*arguments, "--debug"])
    monkeypatch.setenv("CADA_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        run_main(train.main, arguments)
    completed = run("train.py", *arguments, debug=True)
    assert completed.returncode == 1 and "Traceback" in completed.stderr
    assert "ConfigError: unknown config key 'optim.learning_rate'" in completed.stderr


def test_the_error_goes_to_the_run_log_too(tmp_path, capsys):
    def main(argv):
        setup_logging(tmp_path)
        logging.getLogger("train").info("starting")
        raise ConfigError("data.batch_size (from command line 'data.batch_size=0'): expected >= 1, got 0")

    with pytest.raises(SystemExit) as stop:
        run_main(main, [])
    assert stop.value.code == 2
    expected = "error: data.batch_size (from command line 'data.batch_size=0'): expected >= 1, got 0"
    assert capsys.readouterr().err.splitlines()[-1] == expected
    logged = (tmp_path / "log.txt").read_text().splitlines()
    assert logged[-1].endswith(f"ERROR cada: {expected}") and logged[0].endswith("INFO train: starting")


def test_unexpected_errors_keep_their_traceback():
    def main(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="a bug"):
        run_main(main, [])
