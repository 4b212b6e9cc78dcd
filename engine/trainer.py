"""The training loop: schedule → forward → backward/clip/step → log → evaluate/checkpoint.

Runs as one process (CPU or one GPU) or one of many under torchrun. Checkpoints are atomic and hold
everything needed to resume exactly, mid-epoch included: the sampler's order is a function of the epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.person_search import RetrievalSet, TrainPairs
from datasets.sampler import TrainSampler
from engine import builders
from engine.evaluation_run import run_test
from engine.evaluator import evaluate
from engine.step_guard import StepGuard
from models.cada import CADA
from models.padding import longest_caption
from utils.checkpoint import (
    code_version,
    gather_rng_states,
    load_checkpoint,
    remove_stale_temp_files,
    resume_rng_states,
    save_atomic,
)
from utils.config import Config, config_to_dict, dump_config
from utils.dist import barrier, describe_device, get_rank, get_world_size, init_distributed, is_main_process
from utils.interrupt import ignore_interrupt_in_worker
from utils.precision import autocast, set_tf32
from utils.run_folder import claim_run_folder
from utils.run_log import MetricWriter, environment_info, format_duration, setup_logging
from utils.schedule import lr_factor
from utils.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the training loop works on: built once by :func:`set_up`, then advanced step by step."""

    config: Config
    device: torch.device
    output_dir: Path
    guard: StepGuard
    tokenizer: object
    splits: dict
    sampler: TrainSampler
    loader: DataLoader
    micro_batch: int  # pairs per process and forward pass
    model: CADA  # the plain model: its state_dict is what checkpoints hold
    net: torch.nn.Module  # the model, or its DDP wrapper
    forward: Callable  # net, or its torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    writer: MetricWriter
    val_set: RetrievalSet | None
    eval_transform: Callable
    state: dict  # epoch, batch (within the epoch), step, best_metric, best_epoch, train_seconds
    trained_before: float  # training seconds of the runs this one resumes
    loop_started: float  # time.monotonic() when set-up ended

    def training_seconds(self) -> float:
        """Wall time of training so far (val evaluations included), over resumes."""
        return self.trained_before + time.monotonic() - self.loop_started


def train(config: Config) -> dict:
    """Trains, selects on val, evaluates the selected weights on test; returns the test results.

    The output folder is claimed first (see utils/run_folder.py): a finished run with the same settings
    returns its stored ``results.json`` without training.
    """
    device = init_distributed(config.train.device)
    set_tf32(device, config.train.tf32)
    output_dir = Path(config.train.output_dir)
    setup_logging()  # stderr only until the folder is ours
    log.info("training on %s", describe_device(device))
    folder = claim_run_folder(config, output_dir)
    guard = StepGuard(config.train.max_nonfinite_steps, device, output_dir)
    try:
        if folder.finished_results is not None:
            log.info("%s holds a finished run with these settings (results.json): nothing to train. Evaluate it "
                     "again with: bash eval.bash %s [eval.key=value ...]", output_dir, output_dir / "best.pth")
            return folder.finished_results
        return _train(config, device, output_dir, guard, folder.resume_from)
    finally:
        guard.restore()
        folder.release()


def _train(config: Config, device: torch.device, output_dir: Path, guard: StepGuard, resume_from: Path | None) -> dict:
    job_started = time.monotonic()
    run = set_up(config, device, output_dir, guard, resume_from)
    guard.install()  # from here SIGINT/SIGTERM finish the step, save last.pth and stop
    while run.state["epoch"] < config.train.epochs:
        train_epoch(run)
        end_epoch(run)
    run.writer.close()
    return finish(run, setup_seconds=run.loop_started - job_started)


# ---- set-up ----------------------------------------------------------------------------------------------

def set_up(config: Config, device: torch.device, output_dir: Path, guard: StepGuard, checkpoint_path: Path | None
           ) -> Run:
    """Run files, data, model, optimizer and schedule; then, when resuming, the content of ``checkpoint_path``
    (chosen by rank 0, see utils/run_folder.py)."""
    setup_logging(output_dir)
    torch.manual_seed(config.train.seed + get_rank())
    if is_main_process():
        write_run_files(config, output_dir)
    splits = builders.load_splits(config)
    tokenizer = builders.tokenizer_for(config)
    sampler, loader, micro_batch = build_loader(config, builders.build_train_set(config, splits["train"], tokenizer),
                                                device)
    model = builders.build_model(config, load_weights=checkpoint_path is None).to(device)  # resume: last.pth only
    optimizer = builders.build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, sampler.batches_per_epoch // config.train.accumulate_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    state = {"epoch": 0, "batch": 0, "step": 0, "best_metric": float("-inf"), "best_epoch": -1}
    if checkpoint_path is not None:
        state = resume(checkpoint_path, model, optimizer, scheduler, scaler, device, config.train.seed)
    net, forward = wrap_for_training(config, model, state["step"] >= config.loss.local_start_step)
    writer = MetricWriter(output_dir)
    val_set = builders.build_retrieval_set(config, splits["val"]) if splits["val"] else None
    if val_set is None:
        log.info("no val split: best.pth is the last epoch (set data.val_from_train to select on held-out people)")
    return Run(config, device, output_dir, guard, tokenizer, splits, sampler, loader, micro_batch, model, net,
               forward, optimizer, scheduler, scaler, writer, val_set, builders.build_eval_transform(config), state,
               trained_before=state.get("train_seconds", 0.0),  # checkpoints written before this key existed: 0
               loop_started=time.monotonic())


def write_run_files(config: Config, output_dir: Path) -> None:
    """The resolved config and the environment, beside the checkpoints; stale temp files of a crash removed."""
    remove_stale_temp_files(output_dir)
    dump_config(config, output_dir / "config.yaml")
    (output_dir / "environment.json").write_text(json.dumps(
        {**environment_info(), "code_version": code_version()}, indent=2))


def build_loader(config: Config, train_set: TrainPairs,
                 device: torch.device) -> tuple[TrainSampler, DataLoader, int]:
    """This process's sampler and loader over ``train_set``, and its micro-batch size."""
    world, accumulate = get_world_size(), config.train.accumulate_steps
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
    return sampler, loader, micro_batch


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr schedule of ``optim`` (utils/schedule.py), stepped once per optimisation step."""
    optim = config.optim
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, config.train.epochs, optim.schedule, optim.warmup_steps, optim.min_lr / optim.lr))


def resume(path: Path, model: CADA, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
           scaler: torch.amp.GradScaler, device: torch.device, seed: int) -> dict:
    """Loads ``last.pth`` into the training objects and this rank's random streams (re-seeded from ``seed`` when
    the checkpoint comes from another number of processes); returns its train state."""
    checkpoint = load_checkpoint(path, required=("model", "optimizer", "scheduler", "scaler", "train_state", "rng"))
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    state = checkpoint["train_state"]
    resume_rng_states(checkpoint["rng"], device, seed, state["step"])
    log.info("resumed from %s at epoch %d, batch %d (step %d)", path, state["epoch"], state["batch"], state["step"])
    return state


def wrap_for_training(config: Config, model: CADA, local_terms_computed: bool) -> tuple[torch.nn.Module, Callable]:
    """The module to train (DDP under torchrun) and the callable that runs it (``train.compile``: compiled).

    DDP looks for unused parameters (a graph traversal per step) only while some are unused: before
    ``loss.local_start_step`` ITM/ATP leave their heads and the cross-attention idle (see
    :func:`rewrap_at_local_start`). Gradients are views into DDP's buckets (no copy), and buffers (constant
    position ids) are not re-broadcast.
    """
    if get_world_size() == 1:
        net = model
    else:
        net = DistributedDataParallel(model, gradient_as_bucket_view=True, broadcast_buffers=False,
                                      find_unused_parameters=builders.leaves_parameters_unused(config,
                                                                                               local_terms_computed))
    return net, torch.compile(net) if config.train.compile else net


def rewrap_at_local_start(run: Run, local_terms_computed: bool) -> None:
    """Re-wraps the model when ITM/ATP start (at an optimisation step's first micro-batch), so that DDP stops
    searching for unused parameters from then on; the old wrapper's hooks go with it."""
    if get_world_size() == 1 or run.net.find_unused_parameters == builders.leaves_parameters_unused(
            run.config, local_terms_computed):
        return
    log.info("ITM/ATP start at step %d: DDP no longer looks for unused parameters", run.state["step"])
    run.net = run.forward = None
    run.net, run.forward = wrap_for_training(run.config, run.model, local_terms_computed)
    run.net.train()


# ---- one optimisation step -------------------------------------------------------------------------------

def train_epoch(run: Run) -> None:
    """Trains from the state's (epoch, batch) to the end of the epoch; on a stop signal saves and raises."""
    config, state = run.config, run.state
    epoch = state["epoch"]
    run.sampler.set_epoch(epoch, start_batch=state["batch"])
    run.net.train()
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=not is_main_process(),
               initial=state["batch"], total=run.sampler.batches_per_epoch, unit="batch")
    started, first_batch = time.time(), state["batch"]
    for batch in bar:
        total, losses = forward_backward(run, batch)
        state["batch"] += 1
        if state["batch"] % config.train.accumulate_steps:
            continue
        verdict = run.guard.check(state["step"] + 1, epoch, losses, run.scheduler.get_last_lr()[0])  # one sync
        if verdict.skip:  # a non-finite loss within train.max_nonfinite_steps: its gradients are dropped
            run.optimizer.zero_grad(set_to_none=True)
            continue
        optimizer_step(run)
        if state["step"] % config.train.log_every == 0:  # reading losses waits for the device: log steps only
            rate = run.micro_batch * get_world_size() * (state["batch"] - first_batch) / (time.time() - started)
            bar.set_postfix(loss=f"{total.item():.3f}", samples_s=f"{rate:.1f}")
            run.writer.write({"epoch": epoch, "loss": total.item(), "lr": run.scheduler.get_last_lr()[0],
                              "samples_per_s": rate, **{f"loss_{k}": v.item() for k, v in losses.items()}},
                             state["step"], "train/")
        if config.train.save_every_steps and state["step"] % config.train.save_every_steps == 0:
            save(run, "last.pth")
        if verdict.stop_signal:
            save(run, "last.pth")
            raise run.guard.interrupted(verdict.stop_signal, state["step"])
    state["epoch"], state["batch"] = epoch + 1, 0


def forward_backward(run: Run, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Losses of one micro-batch and their backward; gradients accumulate until :func:`optimizer_step`.

    total = sum over terms of loss.<term>.weight * loss_term; ITM and ATP (and their fused pass) are
    computed from optimisation step ``loss.local_start_step`` on. Backward runs on total / accumulate_steps.
    """
    config, state = run.config, run.state
    length = longest_caption(batch["attention_mask"])  # on the host copy: no device sync
    if "ara_labels" in batch:  # where the masked words are, also found on the host
        batch["ara_positions"] = (batch["ara_labels"] != IGNORE_INDEX).nonzero().t()  # (2, M)
    batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
    batch["text_length"] = length
    weights = config.loss.weights()
    local = state["step"] >= config.loss.local_start_step
    rewrap_at_local_start(run, local)
    # DDP all-reduces gradients only on the last micro-batch of an accumulation
    last_micro_batch = (state["batch"] + 1) % config.train.accumulate_steps == 0
    with (contextlib.nullcontext() if get_world_size() == 1 or last_micro_batch else run.net.no_sync()):
        with autocast(run.device, config.train.amp):
            losses = run.forward(batch, local=local)
        total = sum(weights[name] * value for name, value in losses.items())
        run.scaler.scale(total / config.train.accumulate_steps).backward()
    run.guard.observe(total)
    return total, losses


def optimizer_step(run: Run) -> None:
    """Clips the gradients (``train.clip_grad_norm`` > 0), steps the optimizer and the lr schedule."""
    if run.config.train.clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.train.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state["step"] += 1


# ---- end of epoch ----------------------------------------------------------------------------------------

def end_epoch(run: Run) -> None:
    """Saves ``last.pth``, validates when due and keeps ``best.pth``: the best val metric, or the last epoch."""
    config, state = run.config, run.state
    save(run, "last.pth")  # before validation: an error there loses no training
    select_last = run.val_set is None or config.train.select_metric == "last"
    if run.val_set is not None and (state["epoch"] % config.train.eval_every == 0
                                    or state["epoch"] == config.train.epochs):
        metric = validate(run)
        if not select_last and metric > state["best_metric"]:
            state["best_metric"], state["best_epoch"] = metric, state["epoch"]
            save(run, "best.pth")
            save(run, "last.pth")  # with the new best metric, so a resumed run compares against it
    if select_last:
        state["best_epoch"] = state["epoch"]
        save(run, "best.pth")


def validate(run: Run) -> float:
    """Evaluates on val, logs and records the metrics; returns the one that selects (``train.select_metric``)."""
    config = run.config
    results = evaluate(run.model, run.val_set, run.tokenizer, run.eval_transform, config.eval, run.device,
                       config.model.max_text_len, config.data.num_workers)
    stage = "reranked" if config.eval.rerank else "global"
    metrics = results[stage]
    log.info("epoch %d val %s: %s", run.state["epoch"], stage, " ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    run.writer.write({f"{stage}_{k}": v for k, v in metrics.items()}, run.state["step"], "val/")
    return selection_value(metrics, config.train.select_metric)


def save(run: Run, name: str) -> None:
    """last.pth holds everything to resume; best.pth only the weights, state and config (no optimizer)."""
    run.state["train_seconds"] = run.training_seconds()
    rngs = gather_rng_states(run.device)
    if is_main_process():
        content = {"model": run.model.state_dict(), "train_state": dict(run.state),
                   "config": config_to_dict(run.config), "code_version": code_version()}
        if name != "best.pth":
            content.update(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                           scaler=run.scaler.state_dict(), rng=rngs)
        save_atomic(content, run.output_dir / name)
    barrier()


def finish(run: Run, setup_seconds: float) -> dict:
    """Logs the training summary, loads ``best.pth`` and evaluates it once on ``eval.split``."""
    state, wall_time = run.state, {"setup": setup_seconds, "training": run.training_seconds()}
    log.info("training done in %s (%d steps, validation included%s); best epoch %d (val %s %.2f)",
             format_duration(wall_time["training"]), state["step"],
             f", {format_duration(run.trained_before)} of it before the resume" if run.trained_before else "",
             state["best_epoch"], run.config.train.select_metric, state["best_metric"])
    run.model.load_state_dict(load_checkpoint(run.output_dir / "best.pth")["model"])
    return run_test(run.config, run.model, run.tokenizer, run.splits, run.device, run.output_dir,
                    run.output_dir / "best.pth", wall_time)


def selection_value(metrics: dict, name: str) -> float:
    """The val number that picks best.pth: one metric, or ``r_mean`` = (R1 + R5 + R10) / 3 (the reference)."""
    if name == "r_mean":
        return (metrics["R1"] + metrics["R5"] + metrics["R10"]) / 3
    return metrics.get(name, float("nan"))
