"""torchrun start-up check: init the process group (NCCL on CUDA, gloo on CPU), one all-reduce, DDP wrap.

Rank 0 prints (and with ``--save`` stores) whether the all-reduce summed correctly and the start-up seconds.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/dist_startup.py [--save]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_output_arguments, finish  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    value = torch.ones(4, device=device) * (rank + 1)
    dist.all_reduce(value)  # 1 + 2 + ... + world
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8).to(device))
    model(torch.randn(2, 8, device=device)).sum().backward()
    run = {"backend": backend, "world_size": world, "all_reduce_ok": bool(value[0].item() == world * (world + 1) / 2),
           "startup_s": time.perf_counter() - start}
    dist.destroy_process_group()
    if rank == 0:
        finish(args, "dist_startup", f"{backend}, {world} process{'es' if world > 1 else ''}", run, device)
    return run


if __name__ == "__main__":
    main()
