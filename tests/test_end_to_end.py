"""Train → checkpoint → evaluate on the synthetic set, through the real entry points."""
import json
import subprocess
import sys

import pytest

from utils.checkpoint import load_checkpoint
from utils.config import config_from_dict


@pytest.mark.slow
def test_training_writes_checkpoints_logs_and_results(trained_run):
    run = trained_run.output_dir
    for name in ("best.pth", "last.pth", "config.yaml", "environment.json", "metrics.jsonl", "results.json"):
        assert (run / name).is_file(), name
    last = load_checkpoint(run / "last.pth")
    assert last["train_state"]["epoch"] == 3 and last["train_state"]["batch"] == 0
    config = config_from_dict(last["config"])  # self-describing
    assert config.train.epochs == 3 and set(config.loss.enabled()) == {"global", "itm", "atp", "ara"}
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if "loss" in r]
    assert train_losses and all(loss == loss for loss in train_losses)  # finite, logged
    assert train_losses[-1] < 0.9 * train_losses[0]  # it learns: the weighted loss falls
    # ITM/ATP start at step 5 (loss.local_start_step): the first log (steps 1-5) has none, then all four train
    assert {"loss_global", "loss_ara"} <= set(logged[0]) and not {"loss_itm", "loss_atp"} & set(logged[0])
    assert {"loss_global", "loss_itm", "loss_atp", "loss_ara"} <= set(logged[1])
    results = json.loads((run / "results.json").read_text())
    assert results["split"] == "test" and set(results["stages"]) == {"global", "reranked"}
    assert results["chance_r1"] > 0 and "oracle" not in results  # the ceiling is a command of its own
    wall_time = results["wall_time_s"]  # the phases of this run, as the log reports them
    assert set(wall_time) == {"setup", "training", "evaluation"} and all(s > 0 for s in wall_time.values())
    assert last["train_state"]["train_seconds"] <= wall_time["training"]  # last.pth is written before the end


@pytest.mark.slow
def test_eval_reproduces_training_results(trained_run):
    """``eval.py best.pth`` with the checkpoint's own config prints the numbers training wrote."""
    completed = subprocess.run([sys.executable, "eval.py", str(trained_run.checkpoint)], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    trained = json.loads((trained_run.output_dir / "results.json").read_text())
    evaluated = json.loads((trained_run.output_dir / "eval_best_test" / "results.json").read_text())
    assert evaluated["stages"] == trained["stages"]
    assert f"{trained['stages']['reranked']['R1']:.2f}" in completed.stderr  # the table is printed
