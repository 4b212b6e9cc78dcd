"""The ``eval.py`` job: load a checkpoint and a config, evaluate a split, write results."""
from __future__ import annotations

import logging
from pathlib import Path

from engine import builders
from engine.trainer import run_test
from models.checkpoint_import import load_pretrained
from utils.checkpoint import load_checkpoint
from utils.config import config_from_dict, load_config
from utils.dist import init_distributed
from utils.run_log import setup_logging

log = logging.getLogger(__name__)


def resolve_config(checkpoint: str | Path, config_path: str | None, overrides: list[str]):
    """The given YAML, or else the config stored in our checkpoint, with overrides applied."""
    if config_path is not None:
        return load_config(config_path, overrides)
    stored = load_checkpoint(checkpoint).get("config")
    if stored is None:
        raise ValueError(f"{checkpoint} holds no config (BLIP/CADA release?): pass a config YAML after it")
    return config_from_dict(stored, overrides)


def run_evaluation(checkpoint: str, config_path: str | None, overrides: list[str]) -> dict:
    config = resolve_config(checkpoint, config_path, overrides)
    device = init_distributed(config.train.device)
    output_dir = Path(checkpoint).resolve().parent / f"eval_{config.eval.split}"
    setup_logging(output_dir)
    model = builders.build_model(config, load_weights=False)
    load_pretrained(model, checkpoint, allow_missing=model.new_parameter_prefixes())
    model.to(device)
    splits = builders.load_splits(config)
    return run_test(config, model, builders.tokenizer_for(config), splits, device, output_dir, Path(checkpoint))
