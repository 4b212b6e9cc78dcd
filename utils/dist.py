"""torch.distributed in one place: init from the environment, rank helpers, gathers.

Launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set) the process group is NCCL on GPU and gloo on
CPU; without a launcher there is no process group and every helper is the identity at world size 1.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto") -> torch.device:
    """Joins the process group when launched by torchrun and returns this process's device.

    Args:
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` (this process's local GPU under torchrun)
            or ``cuda:N`` (GPU N, single process).
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but no CUDA device is visible (use cpu or auto)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if ":" in device:
        local_rank = int(device.split(":")[1])
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"train.device={device} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        chunk = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * chunk:(dist.get_rank() + 1) * chunk]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` (B, ...) from every rank along dim 0, keeping gradients (identity at world 1).

    Every rank must pass the same shape. The backward all-reduces, so each rank's loss may use the full
    gathered batch and the gradients match one process holding the global batch (with the loss averaged
    over ranks by DDP).
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` (B, ...) from every rank along dim 0 without gradient (identity at world 1)."""
    if get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_gather_object(obj) -> list:
    """Gathers a picklable object from every rank (a one-element list at world 1)."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
