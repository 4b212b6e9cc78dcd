"""One training step (forward + backward + AdamW) of CADA against the authors' way, in one run.

Baseline (the authors' way, ``tests/helpers.py: authors_way_losses``): captions padded to 73 tokens, tokenised
and POS-tagged again in every step, decoder logits for every position, image keys/values projected per ITM pair,
torch's default AdamW. Ours: ``CADA.forward`` on the batch tokenised once and fused AdamW (as the trainer builds
it), at fp32, bf16 autocast, with gradient checkpointing or torch.compile. Each variant runs in its own process
so that its peak memory is its own.

Usage: python benchmarks/train_step.py [--model cada_base --batch 4 --steps 3 --variants ... --save]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_output_arguments,
    cuhk_like_captions,
    finish,
    peak_memory_mib,
    pick_device,
    prepare_text,
    reset_peak_memory,
    run_variant_processes,
    setup_threads,
    synchronize,
    train_batch,
)
from datasets.attributes import build_tagger  # noqa: E402
from datasets.tokenization import build_tokenizer  # noqa: E402
from models.cada import CADA  # noqa: E402
from models.registry import get_model_spec  # noqa: E402
from tests.helpers import authors_way_losses  # noqa: E402

VARIANTS = {  # name: (amp, grad_checkpointing, compile, the authors' way)
    "baseline": ("off", False, False, True),
    "fp32": ("off", False, False, False),
    "bf16": ("bf16", False, False, False),
    "fp32+ckpt": ("off", True, False, False),
    "bf16+ckpt": ("bf16", True, False, False),
    "fp32+compile": ("off", False, True, False),
    "bf16+compile": ("bf16", False, True, False),
}


def build(model_name: str, image_size: tuple[int, int], checkpointing: bool, device: torch.device) -> CADA:
    torch.manual_seed(0)
    return CADA(get_model_spec(model_name), image_size, grad_checkpointing=checkpointing).to(device)


def run_variant(args, variant: str) -> dict:
    """Times ``args.steps`` training steps of one variant on a cached batch; returns samples/s and peak memory."""
    amp, checkpointing, compile_model, authors = VARIANTS[variant]
    device = pick_device(args.device)
    model = build(args.model, tuple(args.image_size), checkpointing, device).train()
    # ours: fused AdamW on CPU and CUDA, as the trainer builds it; the authors': torch's default AdamW
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=not authors or None)
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")
    captions = cuhk_like_captions(args.batch, seed=1)
    generator = torch.Generator().manual_seed(0)
    cached = {k: v.to(device) for k, v in train_batch(prepare_text(captions, tokenizer, tagger, generator),
                                                         tuple(args.image_size)).items()}
    forward = torch.compile(model) if compile_model else model
    context = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext())

    def step() -> None:
        if authors:  # text prepared again in every step
            text = prepare_text(captions, tokenizer, tagger, torch.Generator().manual_seed(0))
            batch = {**cached, **{k: v.to(device) for k, v in text.items()}}
            with context:
                losses = authors_way_losses(model, batch)
        else:
            with context:
                losses = forward(cached)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (and compilation) outside the peak
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    return {"variant": variant, "seconds_per_step": seconds, "samples_per_s": args.batch / seconds,
            "peak_mib": peak_memory_mib(device)}


@torch.no_grad()
def check_equal(model_name: str = "cada_tiny", image_size=(64, 32), batch: int = 6) -> dict[str, float]:
    """Max |ours - baseline| of each loss on one batch (eval mode, no dropout): the savings are exact."""
    model = build(model_name, image_size, False, torch.device("cpu")).eval()
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")
    text = prepare_text(cuhk_like_captions(batch, seed=2), tokenizer, tagger, torch.Generator().manual_seed(0))
    data = train_batch(text, image_size)
    ours, reference = model(data), authors_way_losses(model, data)
    return {name: abs(ours[name].item() - reference[name].item()) for name in reference}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cada_base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--variants", default="baseline,fp32,bf16,fp32+ckpt", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_threads()
    if args.one:
        print(json.dumps(run_variant(args, args.one)))
        return {}
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    rows = run_variant_processes(__file__, variants, [
        "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
        "--image-size", *map(str, args.image_size), "--device", args.device])
    device = pick_device(args.device)
    run = {"model": args.model, "batch": args.batch, "image_size": list(args.image_size), "steps": args.steps,
           "rows": rows, "max_loss_difference": check_equal() if args.model == "cada_tiny" else None}
    height, width = args.image_size
    finish(args, "train_step", f"{args.model}, batch {args.batch}, {height}x{width}", run, device)
    return run


if __name__ == "__main__":
    main()
