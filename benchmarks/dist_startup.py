"""torchrun start-up check: init the process group (NCCL on CUDA, gloo on CPU), one all-reduce, DDP wrap.

Usage: torchrun --nproc_per_node=1 benchmarks/dist_startup.py [--json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    value = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(value)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8).to(device))
    model(torch.randn(2, 8, device=device)).sum().backward()
    world = dist.get_world_size()
    ok = bool(value[0].item() == world * (world + 1) / 2)
    seconds = time.perf_counter() - start
    dist.destroy_process_group()
    result = {"backend": backend, "world_size": world, "all_reduce_ok": ok,
              "startup_s": seconds}
    print(f"torchrun {backend}: all-reduce {'ok' if ok else 'WRONG'}, start-up {seconds:.2f} s")
    if args.json:
        print(json.dumps({"benchmark": "dist_startup", **result}))


if __name__ == "__main__":
    main()
