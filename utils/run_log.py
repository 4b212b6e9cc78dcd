"""Run logging: console/file ``logging`` handlers, JSON lines and TensorBoard scalars, on rank 0 only."""
from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path

import torch

from utils.dist import get_rank, get_world_size, is_main_process


def setup_logging(output_dir: str | Path | None = None) -> None:
    """INFO to stderr (and ``output_dir/log.txt``) on rank 0; warnings only elsewhere."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_dir is not None and is_main_process():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def format_duration(seconds: float) -> str:
    """``"4 min 0 s"`` from 240.2, ``"8.1 s"`` under a minute: how the log reports the wall time of a phase."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def environment_info() -> dict:
    """What produced a run: versions, devices, world size."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "world_size": get_world_size(), "rank": get_rank(), "host": platform.node()}


class MetricWriter:
    """Appends records to ``metrics.jsonl`` and scalars to TensorBoard; a no-op off rank 0."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.enabled = is_main_process()
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = None
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict, step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
