"""One error style: bad inputs to the entry points end as ``error: <message>``, exit code 2, no traceback."""
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
    env = {**ENV, "CADA_DEBUG": "1"} if debug else ENV
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)


def assert_user_error(completed: subprocess.CompletedProcess, *named: str) -> None:
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-2000:]
    message = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, completed.stderr[-2000:]
    for name in named:
        assert name in completed.stderr, (name, completed.stderr[-2000:])


def test_train_unknown_config_key_names_the_key_and_its_source(tmp_path):
    completed = run("train.py", "configs/synthetic.yaml", "optim.learning_rate=1e-4", f"train.output_dir={tmp_path}")
    assert_user_error(completed, "error: unknown config key 'optim.learning_rate'", "command line", "valid keys")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_train_missing_config_file_is_named(tmp_path):
    assert_user_error(run("train.py", str(tmp_path / "nope.yaml")), f"config file not found: {tmp_path / 'nope.yaml'}")


def test_eval_missing_checkpoint_is_named(tmp_path):
    assert_user_error(run("eval.py", str(tmp_path / "best.pth")), f"checkpoint not found: {tmp_path / 'best.pth'}")


def test_compare_missing_results_file_is_named(tmp_path):
    assert_user_error(run("eval.py", "--compare", str(tmp_path / "results.json")),
                      f"results file not found: {tmp_path / 'results.json'}")


def test_retrieve_missing_queries_file_and_gallery_are_named(tmp_path):
    assert_user_error(run("retrieve.py", "--checkpoint", "x.pth", "--gallery", str(tmp_path),
                          "--queries-file", str(tmp_path / "q.txt")), f"queries file not found: {tmp_path / 'q.txt'}")
    assert_user_error(run("retrieve.py", "--checkpoint", "x.pth", "--gallery", str(tmp_path / "photos"),
                          "--query", "a man in a red coat"), f"gallery folder not found: {tmp_path / 'photos'}")


@pytest.mark.parametrize("debug", ["flag", "environment"])
def test_debug_shows_the_traceback(tmp_path, debug):
    args = ["train.py", "configs/synthetic.yaml", "optim.learning_rate=1e-4"]
    completed = run(*args, "--debug") if debug == "flag" else run(*args, debug=True)
    assert completed.returncode == 1
    assert "Traceback" in completed.stderr
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
