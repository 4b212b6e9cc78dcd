"""Search a folder of photos by description.

    python retrieve.py --checkpoint CKPT --gallery DIR --query "a man in a red jacket with a black backpack"
    python retrieve.py --checkpoint CKPT --gallery DIR --queries-file queries.txt --topk 10 --out grid.png

The folder is indexed once per checkpoint (``DIR/.cada_index/``); later searches encode only new or
changed images. Prints each query's ranked images and draws them into a PNG grid; ``--explain`` also draws, per
query, which image regions each word of it matched in its top results (Grad-CAM, engine/explain.py).
"""
import argparse

from engine.folder_search import format_results, read_queries_file, run_search
from utils.cli import add_debug_flag, run_main
from utils.run_log import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="our best.pth, or a BLIP/CADA release with --config")
    parser.add_argument("--gallery", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--query", action="append", default=[], help="a description (repeatable)")
    parser.add_argument("--queries-file", help="a file with one description per line")
    parser.add_argument("--topk", type=int, default=10, help="images shown per query")
    parser.add_argument("--out", default="retrieval.png", help="PNG grid of the results ('' draws none)")
    parser.add_argument("--config", help="YAML config, for checkpoints that carry none (BLIP/CADA releases)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder pass")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    parser.add_argument("--index-dir", help="where the index cache goes (default: GALLERY/.cada_index)")
    parser.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out (counted)")
    parser.add_argument("--explain", type=int, nargs="?", const=3, default=0, metavar="N",
                        help="also draw per-word Grad-CAM heatmaps of each query's top N results (default 3)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error("--topk must be >= 1")
    if args.explain < 0:
        parser.error("--explain must be >= 0")
    setup_logging()
    queries = args.query + (read_queries_file(args.queries_file) if args.queries_file else [])
    if not queries:
        parser.error("give --query TEXT and/or --queries-file FILE")
    index, results, written = run_search(
        args.checkpoint, args.gallery, queries, args.topk, args.config, args.device, args.batch_size,
        args.workers, args.skip_bad_images, args.index_dir, args.out or None, args.explain)
    print(format_results(results, index))
    if index.skipped:
        print(f"skipped {len(index.skipped)} unreadable image(s): {', '.join(index.skipped)}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
