"""Time of the start-of-run data checks at CUHK-PEDES size: image headers and caption tokenization.

Writes ``--images`` small JPEGs (CUHK-PEDES has 40,206) to a temporary folder and times, in this process:
- header check: ``datasets.validation.check_images`` with the default thread pool, and with one thread;
- full decode baseline: ``PIL.Image.open(...).convert("RGB")`` of every image, one thread (what reading each
  image once in a data loader costs);
- captions: ``check_captions`` on two synthetic captions per image.
The files are freshly written, so they are in the page cache: a cold cache or a network disk favours the
thread pool more than measured here.

Usage: python benchmarks/validation_speed.py [--images 40206]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.records import PersonRecord  # noqa: E402
from datasets.tokenization import build_tokenizer  # noqa: E402
from datasets.validation import check_captions, check_images  # noqa: E402

COLOURS = ("red", "blue", "black", "white", "grey", "green")


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def decode_all(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40206)
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.new("RGB", (128, 384), (120, 60, 30)).save(buffer, "JPEG", quality=90)  # about CUHK-PEDES' image size
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{i:06d}.jpg" for i in range(args.images)]
        for path in paths:
            path.write_bytes(buffer.getvalue())
        pooled, problems = timed(check_images, paths, "bench")
        assert not problems, problems
        single, _ = timed(check_images, paths, "bench", workers=1)
        decoded, _ = timed(decode_all, paths)
        records = [PersonRecord(p, i, (f"a person in a {COLOURS[i % 6]} coat with {COLOURS[i % 5]} shoes and a bag",
                                       f"the person walks past carrying a {COLOURS[i % 4]} umbrella"), "train")
                   for i, p in enumerate(paths)]
        captions, _ = timed(check_captions, {"train": records}, build_tokenizer(), 73, "bench", False)
    print(f"{args.images} images: header check {pooled:.2f} s (thread pool), {single:.2f} s (1 thread), "
          f"full decode {decoded:.2f} s (1 thread); decode / pooled header check = {decoded / pooled:.1f}x")
    print(f"{2 * args.images} captions: tokenize and check {captions:.2f} s")


if __name__ == "__main__":
    main()
