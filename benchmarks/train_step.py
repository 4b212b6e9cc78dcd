"""One training step (forward + backward + AdamW) of CADA against the authors' way, in one run.

Baseline (written here, the way the authors' code works): every caption padded to 73 tokens in every
pass, each caption tokenised and POS-tagged in every step, decoder logits for every position, each
ITM pair's image keys/values projected separately, layers that keep more for backward (dropout's float
noise, attention's probabilities, noise and dropped probabilities, both h and GELU(h) in each feed-forward:
``use_authors_layers``), torch's default AdamW. Ours: ``CADA.forward`` on the cached batch (tokenised
once) and fused AdamW (as the trainer builds it), with the variants fp32, bf16 autocast, gradient
checkpointing, torch.compile and the AdamW step inside backward (``train.optimizer_in_backward``: no two
parameters' gradients need to exist together). Each variant runs in its own process so that its peak memory is its own.

Usage: python benchmarks/train_step.py [--model cada_base --batch 4 --steps 3 --variants ... --json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import Mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    cuhk_like_captions,
    emit,
    peak_memory_mib,
    pick_device,
    prepare_text,
    print_table,
    reset_peak_memory,
    run_variant_processes,
    setup_threads,
    timed,
    train_batch,
)
from datasets.attributes import build_tagger  # noqa: E402
from datasets.tokenization import build_tokenizer  # noqa: E402
from engine.step_in_backward import StepInBackward  # noqa: E402
from models.cada import CADA  # noqa: E402
from models.lean_backward import LeanDropout  # noqa: E402
from models.losses.ara import ara_loss  # noqa: E402
from models.losses.atp import atp_group_features, atp_loss_reference  # noqa: E402
from models.losses.global_alignment import global_alignment_loss  # noqa: E402
from models.losses.itm import itm_loss, itm_similarities, select_hard_negatives  # noqa: E402
from models.med_bert import FeedForwardOutput, MultiHeadAttention  # noqa: E402
from models.registry import get_model_spec  # noqa: E402
from models.vit import LeanMlp  # noqa: E402
from utils.vocab import ENC_ID, VOCAB_SIZE  # noqa: E402

VARIANTS = {  # name: (amp, grad_checkpointing, compile, baseline, optimizer step inside backward)
    "baseline": ("off", False, False, True, False),
    "fp32": ("off", False, False, False, False),
    "bf16": ("bf16", False, False, False, False),
    "fp32+ckpt": ("off", True, False, False, False),
    "bf16+ckpt": ("bf16", True, False, False, False),
    "fp32+compile": ("off", False, True, False, False),
    "bf16+compile": ("bf16", False, True, False, False),
    "fp32+in_backward": ("off", False, False, False, True),
    "fp32+ckpt+in_backward": ("off", True, False, False, True),
}


def baseline_losses(model: CADA, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The four losses computed the authors' way: full-length passes, logits at every decoder position."""
    settings = model.objective
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["label"]
    image_embeds = model.encode_image(batch["image"])
    image_proj = model.project_image(image_embeds)
    text_proj = model.project_text(model.encode_text(ids, mask))
    losses = {"global": global_alignment_loss(F.normalize(image_proj, dim=-1), F.normalize(text_proj, dim=-1),
                                              labels, scale=settings.global_.scale,
                                              weights=(settings.global_.forward_kl, settings.global_.reverse_kl,
                                                       settings.global_.cross_entropy))}
    b = ids.shape[0]
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    with torch.no_grad():
        sim_t2i, sim_i2t = itm_similarities(image_proj, text_proj, image_proj, text_proj, settings.itm.temperature)
        neg_image, neg_text = select_hard_negatives(sim_t2i, sim_i2t, labels, labels, mode=settings.itm.negatives)
    all_ids = torch.cat([enc_ids, enc_ids, enc_ids[neg_text]])  # (3b, 73)
    all_mask = torch.cat([mask, mask, mask[neg_text]])
    fused = model.fuse(all_ids, all_mask, torch.cat([image_embeds, image_embeds[neg_image], image_embeds]))
    logits = model.itm_head(fused[:, 0]).float()
    losses["itm"] = itm_loss(logits[:b], logits[b:])
    groups, _ = atp_group_features(fused, all_mask, mode="reference", groups=settings.atp.groups)
    is_match = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)]).to(ids.device)
    losses["atp"] = atp_loss_reference(model.itm_local_head(groups).float(), is_match, None)
    vocab_logits = model.decode(batch["ara_input_ids"], mask, image_embeds)  # (b, 73, V)
    losses["ara"] = ara_loss(vocab_logits.float().view(1, -1, VOCAB_SIZE), batch["ara_labels"].view(1, -1))
    return losses


class _PlainFeedForwardOutput(FeedForwardOutput):
    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(F.gelu(x))))


def use_authors_layers(model: torch.nn.Module) -> None:
    """Layers as the authors' code runs them on CPU (same results, more kept for backward): dropout keeps
    float noise, attention keeps its probabilities, noise and dropped probabilities, and each feed-forward
    keeps both h and GELU(h)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MultiHeadAttention):
            module.lean_cpu_dropout = False
        elif isinstance(module, LeanDropout):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, torch.nn.Dropout(module.p))
        elif isinstance(module, FeedForwardOutput):
            module.__class__ = _PlainFeedForwardOutput
        elif isinstance(module, LeanMlp):
            module.__class__ = Mlp


def build(model_name: str, image_size: tuple[int, int], checkpointing: bool, device: torch.device) -> CADA:
    torch.manual_seed(0)
    return CADA(get_model_spec(model_name), image_size, grad_checkpointing=checkpointing).to(device)


def prepare_step(args, variant: str, mark=lambda phase: None):
    """Model, optimizer and cached batch of one variant; returns ``(step, device)``. ``step()`` runs one training
    step and calls ``mark`` with "forward", "backward" and "optimizer" as each phase begins."""
    amp, checkpointing, compile_model, baseline, in_backward = VARIANTS[variant]
    device = pick_device(args.device)
    model = build(args.model, tuple(args.image_size), checkpointing, device).train()
    if baseline:
        use_authors_layers(model)
    # ours: fused AdamW on CPU and CUDA, as the trainer builds it; the authors': torch's default AdamW
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=not baseline or None)
    if in_backward:
        StepInBackward(optimizer)
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")
    captions = cuhk_like_captions(args.batch, seed=1)
    generator = torch.Generator().manual_seed(0)
    cached = {k: v.to(device) for k, v in train_batch(prepare_text(captions, tokenizer, tagger, generator),
                                                         tuple(args.image_size)).items()}
    forward = torch.compile(model) if compile_model else model
    context = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext())

    def step() -> None:
        mark("forward")
        if baseline:  # text prepared again in every step
            text = prepare_text(captions, tokenizer, tagger, torch.Generator().manual_seed(0))
            batch = {**cached, **{k: v.to(device) for k, v in text.items()}}
            with context:
                losses = baseline_losses(model, batch)
        else:
            with context:
                losses = forward(cached)
        mark("backward")
        sum(losses.values()).backward()  # with in_backward, AdamW has stepped every parameter in here
        mark("optimizer")
        if not in_backward:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, device


def run_variant(args, variant: str) -> dict:
    """Times ``args.steps`` steps of one variant; returns samples/s and peak memory."""
    step, device = prepare_step(args, variant)
    step()  # warm-up (and compilation) outside the peak
    reset_peak_memory(device)
    seconds = timed(step, device, args.steps, warmup=0)
    return {"variant": variant, "seconds_per_step": seconds, "samples_per_s": args.batch / seconds,
            "peak_mib": peak_memory_mib(device)}


@torch.no_grad()
def check_equal(model_name: str = "cada_tiny", image_size=(64, 32), batch: int = 6) -> dict[str, float]:
    """Max |ours - baseline| of each loss on one batch (eval mode, no dropout): the savings are exact."""
    model = build(model_name, image_size, False, torch.device("cpu")).eval()
    tokenizer, tagger = build_tokenizer(), build_tagger("auto")
    text = prepare_text(cuhk_like_captions(batch, seed=2), tokenizer, tagger, torch.Generator().manual_seed(0))
    data = train_batch(text, image_size)
    ours, reference = model(data), baseline_losses(model, data)
    return {name: abs(ours[name].item() - reference[name].item()) for name in reference}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cada_base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--variants", default="baseline,fp32,bf16,fp32+ckpt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    setup_threads()
    if args.one:
        print(json.dumps(run_variant(args, args.one)))
        return {}
    variants = [v for v in args.variants.split(",") if not VARIANTS[v][2] or hasattr(torch, "compile")]
    rows = run_variant_processes(__file__, variants, [
        "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
        "--image-size", *map(str, args.image_size), "--device", args.device])
    base = next((r for r in rows if r["variant"] == "baseline" and "error" not in r), None)
    for row in rows:
        if base and "error" not in row:
            row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
            row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
    device = pick_device(args.device)
    result = {"model": args.model, "batch": args.batch, "image_size": list(args.image_size), "device": str(device),
              "rows": rows, "max_loss_difference": check_equal() if args.model == "cada_tiny" else None}
    print_table(f"train step, {args.model}, batch {args.batch}, {tuple(args.image_size)}, {device}", rows,
                ["variant", "seconds_per_step", "samples_per_s", "speedup", "peak_mib", "memory_ratio", "error"])
    emit("train_step", result, args.json)
    return result


if __name__ == "__main__":
    main()
