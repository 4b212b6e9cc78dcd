"""Runs every benchmark and prints their tables; ``--quick`` sizes them for a 2-core CPU (< 5 minutes).

Quick: cada_tiny training steps (batch 8, 128x64 images), two-stage evaluation of cada_tiny (96 queries x
96 images, k 16), the loader at 0/2/4 workers against the measured fp32 step rate, and eval_memory at a
reduced size. Full: cada_base at 224x224 (batch 4 and 8), evaluation at --eval-queries x --eval-gallery.

Usage: python benchmarks/run_all.py [--quick] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data_pipeline, eval_two_stage, train_step  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = ["--device", args.device]
    results = {}
    if args.quick:
        train_runs = [["--model", "cada_tiny", "--batch", "8", "--image-size", "128", "64", "--steps", "3",
                       "--variants", "baseline,fp32,bf16,fp32+ckpt,fp32+in_backward"]]
        eval_args = ["--model", "cada_tiny", "--queries", "96", "--gallery", "96", "--image-size", "128", "64"]
        loader_args = ["--images", "48", "--batch", "8", "--image-size", "128", "64"]
        memory_args = ["--queries", "2000", "--gallery", "2000", "--naive-queries", "500"]
    else:
        train_runs = [["--model", "cada_base", "--batch", str(batch), "--variants",
                       "baseline,fp32,bf16,fp32+ckpt,fp32+in_backward,bf16+compile"] for batch in (4, 8)]
        eval_args = ["--model", "cada_base", "--queries", "128", "--gallery", "64"]
        loader_args = ["--images", "96", "--batch", "24", "--image-size", "384", "128"]
        memory_args = []
    results["train_step"] = [train_step.main(run + device) for run in train_runs]
    fp32 = next(r for r in results["train_step"][0]["rows"] if r["variant"] == "fp32")
    results["eval_two_stage"] = eval_two_stage.main(eval_args + device)
    results["data_pipeline"] = data_pipeline.main(loader_args + ["--step-rate", str(fp32.get("samples_per_s", 0))])
    memory = subprocess.run([sys.executable, str(HERE / "eval_memory.py"), *memory_args], capture_output=True, text=True)
    print(memory.stdout)
    results["eval_memory"] = {"returncode": memory.returncode}
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
