"""Runs every benchmark and prints their tables; ``--quick`` sizes them for a 2-core CPU (a few minutes).

Quick: cada_tiny at 128x64 and reduced sizes throughout. Full: cada_base at 224x224 (batch 4 and 8), the loader at
384x128, eval_memory at ICFG-PEDES size. The loader is compared with the measured fp32 step rate. ``--save [DIR]``
stores every result (see ``benchmarks/common.py``); ``python benchmarks/report.py`` renders them.

Usage: python benchmarks/run_all.py [--quick] [--save [DIR]]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data_pipeline, eval_memory, eval_two_stage, train_step  # noqa: E402
from benchmarks.common import RESULTS_DIR  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save", nargs="?", const=str(RESULTS_DIR), default=None, metavar="DIR")
    args = parser.parse_args(argv)
    device = ["--device", args.device]
    output = ["--save", args.save] if args.save else []
    if args.quick:
        train_runs = [["--model", "cada_tiny", "--batch", "8", "--image-size", "128", "64", "--steps", "3",
                       "--variants", "baseline,fp32,bf16,fp32+ckpt"]]
        eval_args = ["--model", "cada_tiny", "--queries", "96", "--gallery", "96", "--image-size", "128", "64"]
        loader_args = ["--images", "48", "--batch", "8", "--image-size", "128", "64"]
        memory_args = ["--queries", "2000", "--gallery", "2000", "--naive-queries", "500"]
    else:
        train_runs = [["--model", "cada_base", "--batch", str(batch), "--variants",
                       "baseline,fp32,bf16,fp32+ckpt,bf16+compile"] for batch in (4, 8)]
        eval_args = ["--model", "cada_base", "--queries", "128", "--gallery", "64"]
        loader_args = ["--images", "96", "--batch", "24", "--image-size", "384", "128"]
        memory_args = []
    train = [train_step.main(run + device + output) for run in train_runs]
    fp32 = next((r for r in train[0]["rows"] if r["variant"] == "fp32" and "error" not in r), {})
    eval_two_stage.main(eval_args + device + output)
    data_pipeline.main(loader_args + ["--step-rate", str(fp32.get("samples_per_s", 0))] + output)
    eval_memory.main(memory_args + output)
    processes = 1 if torch.cuda.device_count() == 1 else 2  # NCCL needs a GPU per process; gloo on CPU
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                    str(Path(__file__).resolve().with_name("dist_startup.py")), *output], check=True)


if __name__ == "__main__":
    main()
