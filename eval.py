"""Evaluate a checkpoint, or compare earlier evaluations.

    python eval.py CHECKPOINT [CONFIG] [section.key=value ...]
    python eval.py --compare RUN_A/results.json RUN_B/results.json ... [--out table.md]

Without CONFIG the config stored in the checkpoint is used (our checkpoints carry one); results go to
``eval_<split>/`` next to the checkpoint. ``eval.visualize=N`` also draws N queries as PNG grids there.
"""
import argparse
from pathlib import Path

from engine.evaluation_run import run_evaluation
from engine.results import compare_results
from utils.cli import add_debug_flag, run_main
from utils.dist import cleanup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="our best.pth/last.pth, BLIP's model_base.pth or a CADA release")
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: the checkpoint's own)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.split=val")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS_JSON", help="tabulate these results.json files")
    parser.add_argument("--out", help="with --compare: also write the markdown table to this file")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.compare:
        if args.checkpoint is not None:
            parser.error("--compare takes results.json files only, not a checkpoint")
        table = compare_results(args.compare)
        print(table)
        if args.out:
            Path(args.out).write_text(table + "\n")
        return
    if args.out:
        parser.error("--out goes with --compare")
    if args.checkpoint is None:
        parser.error("give a CHECKPOINT to evaluate, or --compare RESULTS_JSON ...")
    config, overrides = args.config, args.overrides
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    try:
        run_evaluation(args.checkpoint, config, overrides)
    finally:
        cleanup()


if __name__ == "__main__":
    run_main(main)
