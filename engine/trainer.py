"""The training loop: schedule → forward → backward/clip/step → log → evaluate/checkpoint.

Runs as one process (CPU or one GPU) or one of many under torchrun. Checkpoints are atomic and hold
everything needed to resume exactly, mid-epoch included: the sampler's order is a function of the epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.sampler import TrainSampler
from engine import builders
from engine.evaluation_run import run_test
from engine.evaluator import evaluate
from engine.step_guard import StepGuard
from engine.step_in_backward import StepInBackward
from models.padding import longest_caption
from utils.checkpoint import (
    code_version,
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    save_atomic,
    set_rng_state,
)
from utils.config import Config, config_to_dict, dump_config
from utils.dist import all_gather_object, barrier, get_rank, get_world_size, init_distributed, is_main_process
from utils.errors import ConfigError
from utils.interrupt import ignore_interrupt_in_worker
from utils.precision import autocast
from utils.run_folder import claim_run_folder
from utils.run_log import MetricWriter, environment_info, format_duration, setup_logging
from utils.schedule import local_loss_weight, local_terms_computed, lr_factor

log = logging.getLogger(__name__)

def resume_path(config: Config, output_dir: Path) -> Path | None:
    if not config.train.resume:
        return None
    if config.train.resume == "auto":
        last = output_dir / "last.pth"
        return last if last.is_file() else None
    return Path(config.train.resume)


def train(config: Config) -> dict:
    """Trains, selects on val, evaluates the selected weights on test; returns the test results.

    The output folder is claimed first (see utils/run_folder.py): a finished run with the same settings
    returns its stored ``results.json`` without training.
    """
    device = init_distributed(config.train.device)
    output_dir = Path(config.train.output_dir)
    setup_logging()  # stderr only until the folder is ours
    folder = claim_run_folder(config, output_dir)
    guard = StepGuard(config.train.max_nonfinite_steps, device, output_dir)
    try:
        if folder.finished_results is not None:
            log.info("%s holds a finished run with these settings (results.json): nothing to train. Evaluate it "
                     "again with: bash eval.bash %s [eval.key=value ...]", output_dir, output_dir / "best.pth")
            return folder.finished_results
        return _train(config, device, output_dir, guard)
    finally:
        guard.restore()
        folder.release()


def _train(config: Config, device: torch.device, output_dir: Path, guard: StepGuard) -> dict:
    job_started = time.monotonic()
    setup_logging(output_dir)
    torch.manual_seed(config.train.seed + get_rank())
    if is_main_process():
        remove_stale_temp_files(output_dir)
        dump_config(config, output_dir / "config.yaml")
        (output_dir / "environment.json").write_text(json.dumps(
            {**environment_info(), "code_version": code_version()}, indent=2))
    splits = builders.load_splits(config)
    tokenizer = builders.tokenizer_for(config)
    train_set = builders.build_train_set(config, splits["train"], tokenizer)
    world, accumulate = get_world_size(), config.train.accumulate_steps
    if config.train.optimizer_in_backward and world > 1:
        raise ConfigError(f"train.optimizer_in_backward needs one process, got {world}: DDP's all-reduce would "
                          "come after each parameter's update")
    micro_batch = builders.micro_batch_size(config, world)
    sampler = TrainSampler(train_set.labels, micro_batch * world, config.data.instances_per_id,
                           config.train.seed, get_rank(), world, accumulate)
    log.info("global batch %d = %d process(es) x %d accumulation step(s) x %d pairs", config.data.global_batch_size,
             world, accumulate, micro_batch)
    loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler,
                        num_workers=config.data.num_workers, persistent_workers=config.data.num_workers > 0,
                        pin_memory=device.type == "cuda", drop_last=True,
                        generator=torch.Generator(),  # own generator: the loader must not consume the global RNG
                        worker_init_fn=ignore_interrupt_in_worker)
    checkpoint_path = resume_path(config, output_dir)
    model = builders.build_model(config, load_weights=checkpoint_path is None).to(device)  # resume: last.pth only
    optimizer = builders.build_optimizer(config, model)
    steps_per_epoch = sampler.batches_per_epoch // accumulate
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, config.train.epochs, config.optim.schedule, config.optim.warmup_steps,
        config.optim.min_lr / config.optim.lr))
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    weights = config.loss.weights()
    state = {"epoch": 0, "batch": 0, "step": 0, "best_metric": float("-inf"), "best_epoch": -1}

    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["train_state"]
        set_rng_state(checkpoint["rng"][get_rank()])
        log.info("resumed from %s at epoch %d, batch %d (step %d)", checkpoint_path, state["epoch"], state["batch"],
                 state["step"])
    step_in_backward = StepInBackward(optimizer) if config.train.optimizer_in_backward else None
    net = (DistributedDataParallel(model, find_unused_parameters=builders.leaves_parameters_unused(config))
           if world > 1 else model)
    forward = torch.compile(net) if config.train.compile else net
    writer = MetricWriter(output_dir)
    val_set = builders.build_retrieval_set(config, splits["val"]) if splits["val"] else None
    if val_set is None:
        log.info("no val split: best.pth is the last epoch (set data.val_from_train to select on held-out people)")
    eval_transform = builders.build_eval_transform(config)

    # wall time of the phases, for results.json; training time carries over a resume in train_state
    loop_started = time.monotonic()
    setup_seconds = loop_started - job_started
    trained_before = state.get("train_seconds", 0.0)  # checkpoints written before this key existed: 0

    def training_seconds() -> float:
        return trained_before + time.monotonic() - loop_started

    def save(name: str) -> None:
        """last.pth holds everything to resume; best.pth only the weights, state and config (no optimizer)."""
        state["train_seconds"] = training_seconds()
        rngs = all_gather_object(rng_state())
        if is_main_process():
            content = {"model": model.state_dict(), "train_state": dict(state), "config": config_to_dict(config),
                       "code_version": code_version()}
            if name != "best.pth":
                content.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                               scaler=scaler.state_dict(), rng=rngs)
            save_atomic(content, output_dir / name)
        barrier()

    guard.install()  # from here SIGINT/SIGTERM finish the step, save last.pth and stop
    while state["epoch"] < config.train.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch, start_batch=state["batch"])
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=not is_main_process(),
                   initial=state["batch"], total=sampler.batches_per_epoch, unit="batch")
        started = time.time()
        for batch in bar:
            length = longest_caption(batch["attention_mask"])  # on the host copy: no device sync
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            batch["text_length"] = length
            last_micro_batch = (state["batch"] + 1) % accumulate == 0
            # DDP all-reduces gradients only on the last micro-batch of an accumulation
            # ITM/ATP: not computed before loss.local_start_step, then their weights ramp in
            local = local_loss_weight(state["step"], config.loss.local_start_step, config.loss.local_warmup_steps)
            with (contextlib.nullcontext() if world == 1 or last_micro_batch else net.no_sync()):
                with autocast(device, config.train.amp):
                    losses = forward(batch, local=local_terms_computed(state["step"], config.loss.local_start_step))
                total = sum(weights[name] * (local if name in ("itm", "atp") else 1.0) * value
                            for name, value in losses.items())
                if step_in_backward is None:
                    scaler.scale(total / accumulate).backward()
            guard.observe(total)
            state["batch"] += 1
            if state["batch"] % accumulate:
                continue
            verdict = guard.check(state["step"] + 1, epoch, losses, scheduler.get_last_lr()[0])  # one sync per step
            if verdict.skip:  # a non-finite loss within train.max_nonfinite_steps: its gradients are dropped
                optimizer.zero_grad(set_to_none=True)
                continue
            if step_in_backward is not None:
                total.backward()  # each parameter's AdamW update runs in here, as soon as its gradient is complete
            else:
                if config.train.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] += 1
            if state["step"] % config.train.log_every == 0:  # reading losses waits for the device: log steps only
                rate = micro_batch * world * (state["batch"] - bar.initial) / (time.time() - started)
                bar.set_postfix(loss=f"{total.item():.3f}", samples_s=f"{rate:.1f}")
                writer.write({"epoch": epoch, "loss": total.item(), "lr": scheduler.get_last_lr()[0],
                              "samples_per_s": rate, **{f"loss_{k}": v.item() for k, v in losses.items()}},
                             state["step"], "train/")
            if config.train.save_every_steps and state["step"] % config.train.save_every_steps == 0:
                save("last.pth")
            if verdict.stop_signal:
                save("last.pth")
                raise guard.interrupted(verdict.stop_signal, state["step"])
        state["epoch"], state["batch"] = epoch + 1, 0
        save("last.pth")  # before validation: an error there loses no training
        select_last = val_set is None or config.train.select_metric == "last"
        if val_set is not None and (state["epoch"] % config.train.eval_every == 0
                                    or state["epoch"] == config.train.epochs):
            results = evaluate(model, val_set, tokenizer, eval_transform, config.eval, device,
                               config.model.max_text_len, config.data.num_workers)
            stage = "reranked" if config.eval.rerank else "global"
            log.info("epoch %d val %s: %s", state["epoch"], stage, _format(results[stage]))
            writer.write({f"{stage}_{k}": v for k, v in results[stage].items()}, state["step"], "val/")
            metric = selection_value(results[stage], config.train.select_metric)
            if not select_last and metric > state["best_metric"]:
                state["best_metric"], state["best_epoch"] = metric, state["epoch"]
                save("best.pth")
                save("last.pth")  # with the new best metric, so a resumed run compares against it
        if select_last:
            state["best_epoch"] = state["epoch"]
            save("best.pth")
    writer.close()
    wall_time = {"setup": setup_seconds, "training": training_seconds()}
    log.info("training done in %s (%d steps, validation included%s); best epoch %d (val %s %.2f)",
             format_duration(wall_time["training"]), state["step"],
             f", {format_duration(trained_before)} of it before the resume" if trained_before else "",
             state["best_epoch"], config.train.select_metric, state["best_metric"])
    best = load_checkpoint(output_dir / "best.pth")
    model.load_state_dict(best["model"])
    return run_test(config, model, tokenizer, splits, device, output_dir, output_dir / "best.pth", wall_time)


def selection_value(metrics: dict, name: str) -> float:
    """The val number that picks best.pth: one metric, or ``r_mean`` = (R1 + R5 + R10) / 3 (the reference)."""
    if name == "r_mean":
        return (metrics["R1"] + metrics["R5"] + metrics["R10"]) / 3
    return metrics.get(name, float("nan"))


def _format(metrics: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in metrics.items())
