"""Benchmarks, run as a user runs them (subprocesses; tests never import benchmarks/): results files are written
and merged, rendered into tables with hand-computed ratios, and the GPU check runs at toy size on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
BEGIN = "<!-- benchmark tables: python benchmarks/report.py --update docs/performance.md -->"
END = "<!-- end of benchmark tables -->"

CPU_RESULTS = {
    "device": "Test CPU 9000", "device_type": "cpu", "torch": "2.0.0",
    "benchmarks": {
        "train_step": {"cada_tiny, batch 8, 128x64": {"threads": 2, "rows": [
            {"variant": "baseline", "seconds_per_step": 2.0, "samples_per_s": 4.0, "peak_mib": 1000.0},
            {"variant": "fp32", "seconds_per_step": 0.5, "samples_per_s": 16.0, "peak_mib": 900.0},
            {"variant": "bf16", "error": "killed"}]}},
        "eval_two_stage": {"tiny, 8 queries": {"threads": 2, "rows": [
            {"variant": "baseline", "stage1_s": 1.0, "rerank_s": 3.0},
            {"variant": "off", "stage1_s": 1.0, "rerank_s": 1.0, "same_top_k": True},
            {"variant": "bf16", "stage1_s": 0.5, "rerank_s": 0.5, "same_top_k": False}]}},
        "data_pipeline": {"batch 8": {"threads": 2, "step_rate": 40.0, "rows": [
            {"workers": 0, "samples_per_s": 1234.4}, {"workers": 2, "samples_per_s": 80.0}]}},
        "eval_memory": {"2,000 x 2,000": {"threads": 2, "measured_queries": 500, "rows": [
            {"approach": "chunked", "peak_extra_mib": 40.0, "seconds": 2.0},
            {"approach": "full matrix", "peak_extra_mib": 200.0, "seconds": 1.0}]}},
        "dist_startup": {"gloo, 2 processes": {"threads": 2, "all_reduce_ok": True, "startup_s": 1.25}},
    },
}
GPU_RESULTS = {
    "device": "Test GPU", "device_type": "cuda", "torch": "2.1.0",
    "benchmarks": {"train_step": {"cada_base, batch 24, 224x224": {"threads": 16, "rows": [
        {"variant": "baseline", "seconds_per_step": 1.0, "samples_per_s": 24.0, "peak_mib": 10000.0},
        {"variant": "fp32", "seconds_per_step": 0.8, "samples_per_s": 30.0, "peak_mib": 8000.0}]}}},
}
# What the renderer must print for the two files above; every ratio worked out by hand (GPU files come first,
# threads are shown for CPUs only).
EXPECTED = """### Training step (forward, backward, AdamW): Test GPU (GPU), torch 2.1.0

| setting | variant | s / step | samples / s | speed vs authors' | peak MiB | memory vs authors' |
|---|---:|---:|---:|---:|---:|---:|
| cada_base, batch 24, 224x224 | authors' way | 1 | 24 | 1.00× | 10,000 | 1.00× |
|  | fp32 | 0.8 | 30 | 1.25× | 8,000 | 0.80× |

### Training step (forward, backward, AdamW): Test CPU 9000 (CPU), torch 2.0.0

| setting | variant | s / step | samples / s | speed vs authors' | peak MiB | memory vs authors' |
|---|---:|---:|---:|---:|---:|---:|
| cada_tiny, batch 8, 128x64, 2 threads | authors' way | 2 | 4 | 1.00× | 1,000 | 1.00× |
|  | fp32 | 0.5 | 16 | 4.00× | 900 | 0.90× |
|  | bf16 | failed: killed |  |  |  |  |

### Two-stage evaluation (cosine top k, then ITM re-ranking): Test CPU 9000 (CPU), torch 2.0.0

| setting | path | seconds | re-ranking | speed vs authors' | same top k as authors' |
|---|---:|---:|---:|---:|---:|
| tiny, 8 queries, 2 threads | authors' way, fp32 | 4 | 75 % | 1.00× |  |
|  | ours, fp32 | 2 | 50 % | 2.00× | yes |
|  | ours, bf16 | 1 | 50 % | 4.00× | no |

### Training data loader: Test CPU 9000 (CPU), torch 2.0.0

| setting | workers | samples / s | vs the fp32 training step |
|---|---:|---:|---:|
| batch 8, 2 threads | 0 | 1,234 | 30.86× |
|  | 2 | 80 | 2.00× |

### Retrieval metrics on an ICFG-PEDES-shaped problem: Test CPU 9000 (CPU), torch 2.0.0

| setting | approach | peak extra MiB | seconds | memory vs full matrix |
|---|---:|---:|---:|---:|
| 2,000 x 2,000, 2 threads | chunked | 40 | 2 | 0.20× |
|  | full matrix (measured on 500 queries, scaled) | 200 | 1 | 1.00× |

### torchrun start-up: Test CPU 9000 (CPU), torch 2.0.0

| setting | all-reduce correct | start-up s |
|---|---:|---:|
| gloo, 2 processes, 2 threads | yes | 1.25 |
"""


def run_script(*arguments, timeout=600):
    return subprocess.run([sys.executable, *map(str, arguments)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_results(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "cpu-test-cpu-9000-torch2.0.0.json").write_text(json.dumps(CPU_RESULTS))
    (folder / "test-gpu-torch2.1.0.json").write_text(json.dumps(GPU_RESULTS))
    return folder


def test_report_renders_one_table_per_benchmark_and_device_with_hand_computed_ratios(tmp_path):
    done = run_script(BENCHMARKS / "report.py", "--results", write_results(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED + "\n"


def test_report_update_replaces_only_the_marked_block_and_is_idempotent(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\nintro\n\n{BEGIN}\nold tables\n{END}\n\noutro\n")
    results = write_results(tmp_path / "results")
    for _ in range(2):
        done = run_script(BENCHMARKS / "report.py", "--results", results, "--update", page)
        assert done.returncode == 0, done.stderr
        assert page.read_text() == f"# Performance\n\nintro\n\n{BEGIN}\n\n{EXPECTED}\n{END}\n\noutro\n"


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON (line 1)"),
    (json.dumps({k: v for k, v in CPU_RESULTS.items() if k != "torch"}), "missing key 'torch'"),
    (json.dumps({**CPU_RESULTS, "benchmarks": {"train_speed": {}}}), "unknown benchmark 'train_speed'"),
    (json.dumps({**CPU_RESULTS, "benchmarks": {"dist_startup": {"gloo": {"startup_s": 1.0}}}}),
     "dist_startup holds a run without the expected fields"),
])
def test_report_names_the_file_and_what_is_wrong(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    done = run_script(BENCHMARKS / "report.py", "--results", tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: {tmp_path / 'bad.json'}" in done.stderr and message in done.stderr, done.stderr


def test_report_update_needs_the_markers(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n")
    done = run_script(BENCHMARKS / "report.py", "--results", write_results(tmp_path / "results"), "--update", page)
    assert done.returncode == 2 and "expected the marker lines" in done.stderr
    assert page.read_text() == "# Performance\n"


@pytest.mark.slow
def test_benchmarks_write_and_merge_one_results_file_per_device_and_torch(tmp_path):
    done = run_script(BENCHMARKS / "data_pipeline.py", "--images", "4", "--batch", "2", "--workers", "0",
                      "--epochs", "1", "--image-size", "32", "16", "--step-rate", "10", "--save", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    assert path.name.startswith("cpu-") and f"-torch{torch.__version__.split('+')[0]}" in path.name
    content = json.loads(path.read_text())
    assert content["device_type"] == "cpu" and content["torch"] == torch.__version__
    (loader,) = content["benchmarks"]["data_pipeline"].values()
    assert loader["threads"] == 1 and loader["step_rate"] == 10 and loader["rows"][0]["samples_per_s"] > 0
    earlier = {"tiny, 8 queries": CPU_RESULTS["benchmarks"]["eval_two_stage"]["tiny, 8 queries"]}
    content["benchmarks"].update(eval_two_stage=earlier, train_step=GPU_RESULTS["benchmarks"]["train_step"])
    path.write_text(json.dumps(content))  # as if those had run before on this device

    done = run_script(BENCHMARKS / "eval_two_stage.py", "--model", "cada_tiny", "--queries", "12", "--gallery", "10",
                      "--k", "4", "--image-size", "32", "16", "--amp", "off", "--device", "cpu", "--save", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # same device and torch: the same file
    merged = json.loads(path.read_text())["benchmarks"]
    assert merged["train_step"] == content["benchmarks"]["train_step"] and merged["data_pipeline"] == {
        "batch 2, 32x16, 4 images": loader}
    assert list(merged["eval_two_stage"]) == ["cada_tiny, 12 queries x 10 images, k 4, 32x16", "tiny, 8 queries"]
    new = merged["eval_two_stage"]["cada_tiny, 12 queries x 10 images, k 4, 32x16"]
    assert [row["variant"] for row in new["rows"]] == ["baseline", "off"]
    assert new["rows"][1]["same_top_k"]  # ours at fp32 ranks exactly as the authors' way does
    done = run_script(BENCHMARKS / "report.py", "--results", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("### Two-stage evaluation") == 1 and "| tiny, 8 queries, 2 threads |" in done.stdout


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_and_writes_its_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu_check summary" in done.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["torch"] == torch.__version__
    checks = result["checks"]
    failed = {label: check for label, check in checks.items() if "error" in check or check.get("ok") is False}
    assert not failed, failed
    assert [row["variant"] for row in checks["train_step_b4"]["rows"]] == ["fp32", "bf16"]
    assert checks["eval_two_stage"]["rows"][1]["same_top_k"]  # ours at fp32 ranks as the authors' way does
    assert checks["dist_startup"]["all_reduce_ok"]
