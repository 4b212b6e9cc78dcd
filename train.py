"""Train CADA: ``python train.py CONFIG [section.key=value ...]`` (see train.bash for multi-GPU)."""
import argparse

from engine.trainer import train
from utils.cli import add_debug_flag, run_main
from utils.config import load_config
from utils.dist import cleanup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/synthetic.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        train(load_config(args.config, args.overrides))
    finally:
        cleanup()


if __name__ == "__main__":
    run_main(main)
