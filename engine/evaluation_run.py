"""The ``eval.py`` job: load a checkpoint and a config, evaluate a split, write results (and pictures)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from engine import builders
from engine.evaluator import evaluate
from engine.explain import Explainer, explain_evaluation
from engine.results import write_results
from engine.visualize import select_queries, write_query_grids
from utils.checkpoint import load_checkpoint
from utils.config import Config, EvalConfig, config_from_dict, load_config
from utils.dist import describe_device, init_distributed, is_main_process
from utils.errors import CheckpointError
from utils.precision import set_tf32
from utils.run_log import format_duration, setup_logging

log = logging.getLogger(__name__)


def run_test(config: Config, model, tokenizer, splits, device, output_dir: Path, checkpoint: Path,
             wall_time: dict[str, float] | None = None) -> dict:
    """Evaluates ``model`` on ``eval.split``; writes ``results.json``, per-query CSVs and (``eval.visualize``) grids.

    ``wall_time`` (seconds by phase, from training) goes into ``results.json`` as ``wall_time_s`` together with
    this evaluation's own seconds (pictures not included).
    """
    started = time.monotonic()
    dataset = builders.build_retrieval_set(config, splits[config.eval.split])
    pictures = config.eval.visualize > 0 or config.eval.visualize_mode == "ids"  # mode and ids checked at load
    results = evaluate(model, dataset, tokenizer, builders.build_eval_transform(config), config.eval, device,
                       config.model.max_text_len, config.data.num_workers)
    results["wall_time_s"] = {**(wall_time or {}), "evaluation": time.monotonic() - started}
    log.info("wall time: %s", ", ".join(f"{phase} {format_duration(seconds)}"
                                         for phase, seconds in results["wall_time_s"].items()))
    if is_main_process():
        if config.eval.explain:  # before write_results: the pointing section goes into results.json
            explain_queries(config, model, results, dataset, splits[config.eval.split], device, output_dir)
        write_results(results, config, checkpoint, output_dir, dataset)
        if pictures:
            draw_queries(results, dataset, config.eval, output_dir / "visualize", seed=config.train.seed)
    return results


def explain_queries(config: Config, model, results: dict, dataset, records, device, output_dir: Path) -> None:
    """``eval.explain``: Grad-CAM panels beside the grids and, where the annotation has part regions, the pointing
    summary as ``results["pointing"]`` (engine/explain.py)."""
    pointing = explain_evaluation(Explainer.for_config(model, config, device), results, dataset, records,
                                  config.eval.explain, output_dir / "visualize")
    if pointing is not None:
        results["pointing"] = pointing
        log.info("pointing game over %d words: hit rate %.1f%% (uniform baseline %.1f%%)", pointing["words"],
                 pointing["hit_rate"], pointing["baseline"])


def draw_queries(results: dict, dataset, settings: EvalConfig, output_dir: Path, seed: int) -> list[Path]:
    """PNG grids of the queries chosen by ``eval.visualize*``, from the re-ranked stage if present, else global."""
    stage = "reranked" if "reranked_per_query" in results else "global"
    per_query = results[f"{stage}_per_query"]
    query_ids = select_queries(per_query["first_positive_rank"], settings.visualize, settings.visualize_mode,
                               seed=seed, ids=settings.visualize_ids)
    return write_query_grids(per_query, dataset, query_ids, output_dir / f"{stage}_{settings.visualize_mode}.png",
                             stage)


def resolve_config(checkpoint: str | Path, config_path: str | None, overrides: list[str]) -> tuple[Config, dict]:
    """Reads the checkpoint once; returns the given YAML's config (or else the checkpoint's own, with overrides
    applied) and the checkpoint's content, for :func:`engine.builders.build_model`."""
    content = load_checkpoint(checkpoint)
    if config_path is not None:
        return load_config(config_path, overrides), content
    stored = content.get("config") if isinstance(content, dict) else None
    if stored is None:
        raise CheckpointError(f"{checkpoint} holds no config (a BLIP/CADA release?): give a config YAML for it")
    return config_from_dict(stored, overrides), content


def run_evaluation(checkpoint: str, config_path: str | None, overrides: list[str]) -> dict:
    config, content = resolve_config(checkpoint, config_path, overrides)
    device = init_distributed(config.train.device)
    set_tf32(device, config.train.tf32)
    output_dir = Path(checkpoint).resolve().parent / f"eval_{Path(checkpoint).stem}_{config.eval.split}"
    setup_logging(output_dir)
    log.info("evaluating on %s", describe_device(device))
    model = builders.build_model(config, weights=checkpoint, checkpoint=content)
    del content
    model.to(device)
    splits = builders.load_splits(config, needed=(config.eval.split,))
    return run_test(config, model, builders.tokenizer_for(config), splits, device, output_dir, Path(checkpoint))
