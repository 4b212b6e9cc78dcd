"""Benchmarks at toy size: the scripts run, and their in-benchmark baselines compute what the fast paths do."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import data_pipeline, eval_two_stage, train_step
from benchmarks.common import cuhk_like_captions
from datasets.tokenization import build_tokenizer, encode
from models.cada import CADA
from models.cada_backbone import CADABackbone
from models.registry import get_model_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_baseline_computes_the_same_losses():
    differences = train_step.check_equal(batch=4)
    assert set(differences) == {"global", "itm", "atp", "ara"}
    assert max(differences.values()) < 1e-5, differences


@pytest.mark.slow
def test_eval_baseline_and_fast_path_rank_the_same_and_captions_look_like_cuhk():
    torch.manual_seed(0)
    model = CADABackbone(get_model_spec("cada_tiny"), (32, 16)).eval()
    captions = cuhk_like_captions(400, seed=0)
    assert 21 < sum(len(c.split()) for c in captions) / 400 < 26
    ids, mask = encode(build_tokenizer(), captions[:12], 73)
    images = torch.randn(10, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    device = torch.device("cpu")
    slow = eval_two_stage.two_stage(model, images, ids, mask, 4, device, fast=False)
    fast = eval_two_stage.two_stage(model, images, ids, mask, 4, device, fast=True, batch_queries=5)
    assert torch.equal(slow["orders"], fast["orders"]) and slow["orders"].shape == (12, 4)


def test_data_pipeline_delivers_every_batch(tmp_path):
    dataset = data_pipeline.build_set(tmp_path, 8, (64, 32))
    assert len(dataset) == 16 and dataset[(0, 1)]["ara_labels"].shape == (73,)
    assert data_pipeline.loader_rate(dataset, 4, 0, epochs=1) > 0


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_and_writes_its_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu_check summary" in done.stdout
    results = {r["benchmark"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert set(results) == {"train_step", "eval_two_stage", "dist_startup"}
    assert [r["variant"] for r in results["train_step"]["rows"]] == ["baseline", "fp32", "bf16"]
    assert results["train_step"]["max_loss_difference"]["ara"] < 1e-5
    assert results["eval_two_stage"]["rows"][1]["same_top_k"]  # ours at fp32 ranks as the baseline does
    assert results["dist_startup"]["all_reduce_ok"]


def test_text_cls_pass_benchmark_compares_two_ways_with_equal_losses():
    from benchmarks.train_overheads import text_cls_pass
    result = text_cls_pass(batch=4, image_size=(32, 16), repeats=1)
    assert set(result["seconds"]) == {"every position", "[CLS] alone"}
    assert result["loss_difference"] < 1e-5


@pytest.mark.skipif(sys.platform != "linux", reason="reads glibc's mallinfo2 and /proc")
def test_memory_breakdown_accounts_for_the_weights_and_adamw_moments():
    command = [sys.executable, str(ROOT / "benchmarks" / "memory_breakdown.py"), "--model", "cada_tiny", "--batch", "4",
               "--image-size", "32", "16", "--variants", "fp32", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])["rows"][0]
    parameter_mib = sum(p.numel() for p in CADA(get_model_spec("cada_tiny"), (32, 16)).parameters()) * 4 / 2**20
    # after a step the heap holds the weights and AdamW's two moments (3 x 44.6 MiB) plus the process's own
    # objects (tokenizer, tagger, interpreter: well under 400 MiB)
    assert 3 * parameter_mib < row["live_idle_mib"] < 3 * parameter_mib + 400
    assert row["max_live_mib"] > row["live_idle_mib"]  # activations and gradients come on top
