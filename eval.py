"""Evaluate a checkpoint: ``python eval.py CHECKPOINT [CONFIG] [section.key=value ...]``.

Without CONFIG the config stored in the checkpoint is used (our checkpoints carry one); the results go to
``eval.output_dir`` or next to the checkpoint.
"""
import argparse

from engine.evaluation_run import run_evaluation
from utils.dist import cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="our best.pth/last.pth, BLIP's model_base.pth or a CADA release")
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: the checkpoint's own)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.split=val")
    args = parser.parse_args()
    config, overrides = args.config, args.overrides
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    try:
        run_evaluation(args.checkpoint, config, overrides)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
