"""torch.distributed in one place: device choice, init from the environment, rank helpers, gathers.

Launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set) the process group is NCCL on GPU and gloo on
CPU; without a launcher there is no process group and every helper is the identity at world size 1.
The gathers move tensors only (``dist.all_gather`` / ``dist.broadcast``); plain Python values (strings,
numbers, lists) go through :func:`all_gather_object`, never tensors, which do not survive its pickling.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from utils.errors import CadaError, ConfigError

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
NVIDIA_DEVICE_FILE = Path("/dev/nvidia0")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def nvidia_devices_present() -> bool:
    """Whether this machine has an NVIDIA driver or device node, whether or not torch can use it."""
    return NVIDIA_DRIVER_FILE.exists() or NVIDIA_DEVICE_FILE.exists()


def cuda_unusable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is false: a CPU-only build, or the error CUDA's initialisation gives."""
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is built without CUDA"
    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError or AssertionError by cause
        return f"CUDA {torch.version.cuda} (torch {torch.__version__}) cannot start: {str(error).strip()}"
    return f"CUDA {torch.version.cuda} (torch {torch.__version__}) sees no device (CUDA_VISIBLE_DEVICES?)"


def resolve_device(device: str, local_rank: int, world_size: int) -> torch.device:
    """This process's device for ``train.device``: ``auto`` (CUDA when usable), ``cpu``, ``cuda`` (GPU
    ``local_rank``, torchrun's ``LOCAL_RANK``) or ``cuda:N`` (one process only).

    Raises:
        ConfigError: CUDA asked for (or NVIDIA devices present under ``auto``) but unusable, ``cuda:N`` under
            torchrun, a GPU index beyond the visible ones.
    """
    if device == "cpu":
        return torch.device("cpu")
    if device != "auto" and device != "cuda" and not device.startswith("cuda:"):
        raise ConfigError(f"train.device={device}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        if device == "auto" and not nvidia_devices_present():
            return torch.device("cpu")
        found = "NVIDIA devices are present but" if device == "auto" else f"train.device={device} but"
        raise ConfigError(f"{found} CUDA is unusable: {cuda_unusable_reason()}; fix the driver or torch build, "
                          f"or set train.device=cpu to train on the CPU")
    index = local_rank
    if device.startswith("cuda:"):
        if world_size > 1:
            raise ConfigError(f"train.device={device} under torchrun would put all {world_size} processes on one "
                              f"GPU; use train.device=cuda (each process takes GPU LOCAL_RANK) or CUDA_VISIBLE_DEVICES")
        index = int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={device} needs GPU {index} but only {torch.cuda.device_count()} CUDA "
                          f"device(s) are visible")
    return torch.device("cuda", index)


def init_distributed(device: str = "auto") -> torch.device:
    """Chooses this process's device (see :func:`resolve_device`), makes it current on CUDA and joins the
    process group when launched by torchrun. Returns the device."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun; the process group does not exist yet
    chosen = resolve_device(device, int(os.environ.get("LOCAL_RANK", 0)), world_size)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not is_distributed():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return chosen


def describe_device(device: torch.device) -> str:
    """One log line: ``device cuda:0 (NVIDIA H200, CUDA 12.8, driver 570.x, N process(es))`` or the CPU's."""
    processes = f"{get_world_size()} process(es)"
    if device.type != "cuda":
        return f"device cpu ({torch.get_num_threads()} threads per process, {processes})"
    driver = "unknown"
    if NVIDIA_DRIVER_FILE.exists():
        words = NVIDIA_DRIVER_FILE.read_text().split()
        driver = next((w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()), driver)
    return (f"device {device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, driver {driver}, "
            f"{processes})")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where collectives need their tensors: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return all_gather_no_grad(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        chunk = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * chunk:(dist.get_rank() + 1) * chunk]


# The gathers stay out of torch.compile's graphs: a collective inside a compiled region (forward and backward
# of an autograd Function) breaks under DDP; disabling them splits the graph around each call instead.
@torch.compiler.disable
def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` (B, ...) from every rank along dim 0, keeping gradients (identity at world 1).

    Every rank must pass the same shape. The backward all-reduces, so each rank's loss may use the full gathered
    batch and the gradients match one process holding the global batch (with the loss averaged by DDP).
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.compiler.disable
@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` (B, ...) from every rank along dim 0 without gradient (identity at world 1)."""
    if get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def all_gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` (n_r, ...) from every rank along dim 0 when n_r differs by rank (identity at
    world 1), on ``tensor``'s device. Each shard, padded to the largest n_r, lands in one (world x max n_r, ...)
    buffer on the collective's device (no pickling); padding rows are dropped with one copy."""
    if get_world_size() == 1:
        return tensor
    device, world = collective_device(), get_world_size()
    counts = all_gather_no_grad(torch.tensor([tensor.shape[0]], device=device)).tolist()  # (world,)
    longest = max(counts)
    padded = tensor.to(device)
    if tensor.shape[0] < longest:
        padded = torch.cat([padded, padded.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
    gathered = padded.new_empty((world * longest, *tensor.shape[1:]))
    dist.all_gather(list(gathered.chunk(world)), padded.contiguous())
    if min(counts) < longest:
        keep = torch.cat([torch.arange(count, device=device) + rank * longest for rank, count in enumerate(counts)])
        gathered = gathered[keep]
    return gathered.to(tensor.device)


def all_gather_object(obj) -> list:
    """Gathers a plain, picklable Python value (not a tensor: see the module docstring) from every rank."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(obj):
    """Rank 0's value of a plain Python ``obj`` on every rank (``obj`` itself at world 1)."""
    return all_gather_object(obj)[0]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def main_process_result(compute):
    """``compute()`` run on rank 0 only; its (plain Python) result on every rank. A :class:`CadaError` it
    raises is raised on every rank, so no rank waits in a collective for one that failed."""
    result, failure = None, None
    if is_main_process():
        try:
            result = compute()
        except CadaError as error:
            failure = error
    shared_result, shared_failure = broadcast_from_main((result, failure and (type(failure), str(failure))))
    if failure is not None:
        raise failure
    if shared_failure is not None:
        raise shared_failure[0](shared_failure[1])
    return shared_result
