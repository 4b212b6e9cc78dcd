"""Evaluation results on disk: ``results.json`` (metrics in percent with their context) and a markdown table."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from utils.config import Config, config_to_dict

log = logging.getLogger(__name__)

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
STAGES = ("global", "reranked")


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
    table = markdown_table({stage: results[stage] for stage in STAGES if stage in results})
    return f"{table}\n\nchance R1: {results['chance_r1']:.2f}% ({results['num_queries']} queries, " \
           f"{results['num_gallery']} gallery images)"


def write_results(results: dict, config: Config, checkpoint: str | Path, output_dir: str | Path) -> Path:
    """Writes ``results.json`` and ``results.md`` into ``output_dir``; logs the table."""
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
    path = output_dir / "results.json"
    path.write_text(json.dumps(record, indent=2))
    (output_dir / "results.md").write_text(results_table(results) + "\n")
    log.info("%s split results (percent):\n%s", config.eval.split, results_table(results))
    return path
