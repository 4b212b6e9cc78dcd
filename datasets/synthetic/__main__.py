"""Command line: ``python -m datasets.synthetic --out DIR [--train-ids N --val-ids N --test-ids N --seed S ...]``."""
from __future__ import annotations

import argparse
import logging

from datasets.synthetic.generate import generate_dataset
from utils.config_schema import SyntheticConfig


def main(argv: list[str] | None = None) -> None:
    """Parses the arguments and generates the dataset."""
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="dataset folder to create, e.g. data/synthetic-pedes")
    parser.add_argument("--train-ids", type=int, default=SyntheticConfig.train_ids, help="training identities")
    parser.add_argument("--val-ids", type=int, default=SyntheticConfig.val_ids, help="val identities")
    parser.add_argument("--test-ids", type=int, default=SyntheticConfig.test_ids, help="test identities")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed, help="random seed (fixes every output byte)")
    parser.add_argument("--images-per-id", type=int, default=SyntheticConfig.images_per_id, help="images per identity")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels")
    parser.add_argument("--width", type=int, default=64, help="image width in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generate_dataset(args.out, args.train_ids, args.val_ids, args.test_ids, seed=args.seed,
                     images_per_id=args.images_per_id, image_size=(args.height, args.width), overwrite=args.overwrite)


if __name__ == "__main__":
    main()
