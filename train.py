"""Train CADA: ``python train.py CONFIG [section.key=value ...]`` (see train.bash for multi-GPU)."""
import argparse

from engine.trainer import train
from utils.config import load_config
from utils.dist import cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/synthetic.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    args = parser.parse_args()
    try:
        train(load_config(args.config, args.overrides))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
