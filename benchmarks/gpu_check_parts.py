"""The parts of benchmarks/gpu_check.sh that no other benchmark covers; each prints one JSON line.

    python benchmarks/gpu_check_parts.py losses [--tiny]       CPU vs device losses on identical weights/inputs
    python benchmarks/gpu_check_parts.py two_processes [--tiny] two gloo processes sharing one device vs one
    python benchmarks/gpu_check_parts.py trainer [--tiny] --out FOLDER   train.py on the synthetic recipe

``--tiny`` runs each at toy size on the CPU (how the test suite checks this script).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cuhk_like_captions, prepare_text, train_batch  # noqa: E402
from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups  # noqa: E402
from datasets.attributes import build_tagger  # noqa: E402
from datasets.tokenization import build_tokenizer  # noqa: E402
from models.cada import CADA  # noqa: E402
from models.registry import get_model_spec  # noqa: E402

TINY = {"model": "cada_tiny", "image_size": (64, 32), "batch": 8, "device": "cpu"}
FULL = {"model": "cada_base", "image_size": (384, 128), "batch": 24, "device": "cuda"}


def batch_and_model(size: dict) -> tuple[dict, CADA]:
    """A CUHK-like batch and a model with seeded random weights (eval mode: no dropout), both on the CPU."""
    captions = cuhk_like_captions(size["batch"], seed=3)
    text = prepare_text(captions, build_tokenizer(), build_tagger("auto"), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return train_batch(text, size["image_size"]), CADA(get_model_spec(size["model"]), size["image_size"]).eval()


def losses_on(model: CADA, batch: dict, device: torch.device, precision: str) -> dict[str, float]:
    """The four losses at ``precision``: fp32 (TF32 off), tf32, or bf16 (autocast, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    context = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), context:
        losses = model.to(device)({k: v.to(device) for k, v in batch.items()})
    return {name: value.item() for name, value in losses.items()}


def check_losses(size: dict) -> dict:
    """|device - CPU| of each loss at fp32, TF32 and bf16, the CPU in fp32 being the reference."""
    batch, model = batch_and_model(size)
    reference = losses_on(model, batch, torch.device("cpu"), "fp32")
    device = torch.device(size["device"])
    differences = {}
    for precision in ("fp32", "tf32", "bf16"):
        losses = losses_on(model, batch, device, precision)
        differences[precision] = {name: abs(losses[name] - value) for name, value in reference.items()}
    return {"benchmark": "losses_cpu_vs_device", "model": size["model"], "batch": size["batch"],
            "cpu_fp32_losses": reference, "abs_difference": differences}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def even_batch(size: dict) -> tuple[dict, CADA]:
    """A batch whose halves are interchangeable for the per-process means: every caption as long and with as
    many ARA-masked tokens (each process averages the ARA loss over its own tokens, as the reference does)."""
    batch, model = batch_and_model(size)
    ids = batch["input_ids"][:, :16].clone()
    ids[:, 1:] = torch.randint(1000, 3000, (ids.shape[0], 15), generator=torch.Generator().manual_seed(1))
    groups = pack_candidate_groups([[[2], [4, 5], [7]]] * ids.shape[0], ids.shape[1])
    ara_ids, ara_labels = mask_attribute_tokens(ids, groups, prob=1.0)
    return {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids), "ara_input_ids": ara_ids,
            "ara_labels": ara_labels}, model


def half_batch_worker(rank: int, port: int, size: dict, out: str) -> None:
    """Rank r of two gloo processes on the same device: losses and gradients of its half, averaged as DDP does."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    batch, model = even_batch(size)
    device = torch.device(size["device"])
    half = size["batch"] // 2
    local = {k: v[rank * half:(rank + 1) * half].to(device) for k, v in batch.items()}
    losses = model.to(device)(local)
    sum(losses.values()).backward()
    for value in [*losses.values(), *(p.grad for p in model.parameters() if p.grad is not None)]:
        dist.all_reduce(value.detach() if value.requires_grad else value)
    grads = {n: p.grad.cpu() / 2 for n, p in model.named_parameters() if p.grad is not None}
    torch.save(({k: v.detach().cpu() / 2 for k, v in losses.items()}, grads), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def check_two_processes(size: dict, folder: Path) -> dict:
    """Two gloo processes holding half the batch each on one device give one process's losses and gradients."""
    batch, model = even_batch(size)
    device = torch.device(size["device"])
    losses = model.to(device)({k: v.to(device) for k, v in batch.items()})
    sum(losses.values()).backward()
    try:
        mp.start_processes(half_batch_worker, args=(free_port(), size, str(folder)), nprocs=2, start_method="spawn")
    except Exception as error:  # noqa: BLE001 - reported in the JSON: the point is to learn what fails
        return {"benchmark": "two_processes_one_device", "ok": False, "error": str(error)[-500:]}
    shared_losses, shared_grads = torch.load(folder / "rank0.pt", weights_only=True)
    loss_difference = max(abs(shared_losses[k].item() - v.item()) for k, v in losses.items())
    differences = {n: (shared_grads[n] - p.grad.cpu()).abs().max().item() for n, p in model.named_parameters()
                   if p.grad is not None}
    worst = max(differences, key=differences.get)
    largest_grad = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    return {"benchmark": "two_processes_one_device", "device": size["device"], "max_loss_difference": loss_difference,
            "max_grad_difference": differences[worst], "worst_parameter": worst, "largest_grad": largest_grad,
            "ok": loss_difference < 1e-4 and differences[worst] < 1e-4 * largest_grad}


def run_trainer(tiny: bool, folder: Path) -> dict:
    """train.py on the synthetic recipe (one epoch of 400 steps on the device; a few toy steps with ``--tiny``)."""
    if tiny:
        arguments = ["tests/configs/tiny.yaml", "model.image_size=[64,32]", "data.synthetic.train_ids=8",
                     "data.synthetic.val_ids=2", "data.synthetic.test_ids=4", "data.global_batch_size=8",
                     "train.epochs=1", "eval.k_test=2"]
    else:  # ITM/ATP from step 200: both phases of the recipe within the epoch
        arguments = ["configs/synthetic.yaml", "train.device=cuda", "train.epochs=1", "loss.local_start_step=200",
                     "data.num_workers=8", "train.eval_every=1"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "train.py", *arguments, f"data.root={folder / 'data'}",
                           f"train.output_dir={folder / 'run'}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"benchmark": "trainer", "ok": False, "error": done.stderr[-1500:]}
    results = json.loads((folder / "run" / "results.json").read_text())
    steps = torch.load(folder / "run" / "last.pth", weights_only=True)["train_state"]["step"]
    device_line = next((line for line in done.stderr.splitlines() if "training on device" in line), "")
    return {"benchmark": "trainer", "ok": True, "steps": steps, "job_s": time.monotonic() - started,
            "wall_time_s": results.get("wall_time_s"), "device_line": device_line.split("training on ")[-1],
            "test": results.get("stages")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["losses", "two_processes", "trainer"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="a scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    size = TINY if args.tiny else FULL
    if args.part == "losses":
        result = check_losses(size)
    elif args.part == "two_processes":
        result = check_two_processes({**size, "model": "cada_tiny", "batch": 8}, folder)
    else:
        result = run_trainer(args.tiny, folder)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
