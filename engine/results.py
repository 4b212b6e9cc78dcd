"""Evaluation results on disk: ``results.json`` (metrics in percent with their context), a markdown table,
per-query CSV files for error analysis, and a side-by-side comparison of several ``results.json``."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from datasets.person_search import RetrievalSet
from datasets.records import read_utf8
from utils.config import Config, config_to_dict
from utils.errors import DataError

log = logging.getLogger(__name__)

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
STAGES = ("global", "reranked")
IMAGE_TO_TEXT = "image_to_text"
PER_QUERY_COLUMNS = ("query_index", "pid", "first_positive_rank", "average_precision", "inverse_negative_penalty",
                     "top1_pid", "top1_path", "query_text")


def file_hash(path: str | Path, length: int = 12) -> str:
    """First ``length`` hex digits of the file's sha256 (identifies a checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def markdown_table(rows: dict[str, dict]) -> str:
    """One row per (name → metrics) with the five metrics in percent."""
    lines = ["| | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def results_table(results: dict) -> str:
    rows = {stage: results[stage] for stage in STAGES if stage in results}
    if IMAGE_TO_TEXT in results:
        rows["image-to-text (global)"] = results[IMAGE_TO_TEXT]
    table = markdown_table(rows)
    return f"{table}\n\nchance R1: {results['chance_r1']:.2f}% ({results['num_queries']} queries, " \
           f"{results['num_gallery']} gallery images)"


def write_results(results: dict, config: Config, checkpoint: str | Path, output_dir: str | Path,
                  dataset: RetrievalSet | None = None) -> Path:
    """Writes ``results.json`` and ``results.md`` into ``output_dir``; logs the table.

    Args:
        results: output of :func:`engine.evaluator.evaluate`.
        checkpoint: the evaluated checkpoint file (hashed into the record).
        dataset: the evaluated set; when given, ``per_query_<stage>.csv`` files are written too.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": config.data.dataset, "split": config.eval.split,
        "stages": {stage: results[stage] for stage in STAGES if stage in results},
        "chance_r1": results["chance_r1"], "num_queries": results["num_queries"],
        "num_gallery": results["num_gallery"],
        "protocol": {"captions": config.data.eval_captions, "k_test": config.eval.k_test,
                     "rerank": config.eval.rerank, "image_size": config.model.image_size},
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_hash(checkpoint),
        "config": config_to_dict(config),
    }
    for optional in (IMAGE_TO_TEXT, "wall_time_s", "pointing"):
        if optional in results:
            record[optional] = results[optional]
    path = output_dir / "results.json"
    path.write_text(json.dumps(record, indent=2))
    (output_dir / "results.md").write_text(results_table(results) + "\n")
    log.info("%s split results (percent):\n%s", config.eval.split, results_table(results))
    if dataset is not None:
        for stage in STAGES:
            if f"{stage}_per_query" in results:
                write_per_query_csv(results[f"{stage}_per_query"], dataset, output_dir / f"per_query_{stage}.csv")
    return path


def write_per_query_csv(per_query: dict, dataset: RetrievalSet, path: str | Path) -> Path:
    """One CSV row per query: its index, person id, first-positive rank, AP and INP (fractions), the person id
    and path of the top-ranked gallery image, and the query text.

    Args:
        per_query: ``results['<stage>_per_query']`` (``first_positive_rank``, ``average_precision``,
            ``inverse_negative_penalty``, ``top_indices``).
        dataset: the evaluated set, in the query order of ``per_query``.
    """
    ranks = per_query["first_positive_rank"].tolist()
    if len(ranks) != len(dataset.query_texts):
        raise ValueError(f"{len(ranks)} per-query results for {len(dataset.query_texts)} queries")
    precisions = per_query["average_precision"].tolist()
    penalties = per_query["inverse_negative_penalty"].tolist()
    top1 = per_query["top_indices"][:, 0].tolist()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_QUERY_COLUMNS)
        for q, text in enumerate(dataset.query_texts):
            writer.writerow([q, int(dataset.query_pids[q]), ranks[q], f"{precisions[q]:.6f}", f"{penalties[q]:.6f}",
                             int(dataset.gallery_pids[top1[q]]), str(dataset.gallery_paths[top1[q]]), text])
    return Path(path)


def _read_stages(path: Path) -> tuple[dict, dict[str, dict]]:
    """A results.json's record and its metric rows by stage (image-to-text as its own stage)."""
    if not path.is_file():
        raise DataError(f"results file not found: {path}")
    try:
        record = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    for key in ("dataset", "split", "checkpoint_sha256", "stages"):
        if key not in record:
            raise DataError(f"{path}: missing key {key!r}; expected a results.json written by eval.py")
    stages = dict(record["stages"])
    if IMAGE_TO_TEXT in record:
        stages["image-to-text"] = record[IMAGE_TO_TEXT]
    for stage, metrics in stages.items():
        absent = [k for k in METRICS if k not in metrics]
        if absent:
            raise DataError(f"{path}: stage {stage!r} lacks metrics {absent}")
    return record, stages


def compare_results(paths: Sequence[str | Path]) -> str:
    """Markdown table of several ``results.json`` side by side: one row per run and stage.

    Columns: run (the results folder), dataset, split, checkpoint hash, stage, then R1/R5/R10/mAP/mINP in
    percent. The image-to-text direction, when a run has it, is its own stage row.
    """
    if not paths:
        raise ValueError("compare_results needs at least one results.json")
    lines = ["| run | dataset | split | checkpoint | stage | " + " | ".join(METRICS) + " |",
             "|---|---|---|---|---|" + "---:|" * len(METRICS)]
    for path in map(Path, paths):
        record, stages = _read_stages(path)
        run = str(path.parent) if path.name == "results.json" else str(path)
        for stage, metrics in stages.items():
            values = " | ".join(f"{metrics[k]:.2f}" for k in METRICS)
            lines.append(f"| {run} | {record['dataset']} | {record['split']} | {record['checkpoint_sha256']} "
                         f"| {stage} | {values} |")
    return "\n".join(lines)
