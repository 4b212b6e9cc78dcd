"""The ceiling of the synthetic set: a ranker that knows every gallery person's true attributes.

A caption states a few facts about its person (always the gender, plus the attribute kinds it mentions).
The oracle scores gallery image g for caption q by the number of q's facts that g's true attributes satisfy,

    score(q, g) = Σ_{(field, value) ∈ facts(q)} 1[attributes(g)[field] = value],

and ranks by a stable descending sort (ties in gallery order, as ``utils.metrics`` does). Captions are
truthful, so the described person always has the full score; everyone else who shares every stated fact
is indistinguishable from the text, which is why even this ranker stays below R1 = 100 %. Facts never include
skin tone (never described) or the bag's side (images are mirrored, so it differs between photos of one
person).

Command line: ``python -m datasets.synthetic.oracle DIR [--split val|test]`` prints the ceiling's metrics table
for a generated folder (every caption of the split is a query, as in ``eval.eval_captions=all``).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.person_search import RetrievalSet
from datasets.records import clean_caption
from datasets.synthetic.generate import ANNOTATION_FILE
from datasets.synthetic.identity import Identity
from utils.cli import add_debug_flag, run_main
from utils.errors import DataError
from utils.metrics import RetrievalMetrics, chance_r1

# The Identity fields each mentioned kind states (hair length and hat/bag colours: see stated_facts).
KIND_FIELDS = {"person": ("build",), "hair": ("hair_colour",), "hat": ("hat",),
               "upper": ("upper", "upper_colour"), "lower": ("lower", "lower_colour"), "shoes": ("shoes_colour",),
               "bag": ("bag",)}


def stated_facts(person: Identity, kinds: Sequence[str], caption: str) -> dict[str, str | None]:
    """The ``{field: value}`` facts a caption of ``person`` written to mention ``kinds`` states (hair length is
    stated only in ~70 % of hair mentions, so it is read from the ``caption`` text)."""
    facts: dict[str, str | None] = {"gender": person.gender}
    for kind in kinds:
        for name in KIND_FIELDS[kind]:
            facts[name] = getattr(person, name)
    if "hair" in kinds and f"{person.hair_length} {person.hair_colour} hair" in caption.lower():
        facts["hair_length"] = person.hair_length
    if "hat" in kinds and person.hat is not None:
        facts["hat_colour"] = person.hat_colour
    if "upper" in kinds and person.upper_pattern != "plain":  # a plain garment's caption names no pattern
        facts["upper_pattern"] = person.upper_pattern
    if "bag" in kinds and person.bag is not None:
        facts["bag_colour"] = person.bag_colour
    return facts


def oracle_scores(query_facts: Sequence[dict], gallery: Sequence[Identity]) -> torch.Tensor:
    """(Q, G) float scores: how many of each query's facts (:func:`stated_facts`) each gallery image's person
    satisfies."""
    scores = torch.zeros(len(query_facts), len(gallery))
    for name in sorted({name for facts in query_facts for name in facts}):
        codes: dict = {}  # value -> int, None ("has no hat/bag") included
        gallery_codes = torch.tensor([codes.setdefault(getattr(p, name), len(codes)) for p in gallery])  # (G,)
        query_codes = torch.tensor([codes.get(f[name], -1) if name in f else -2 for f in query_facts])  # (Q,)
        scores += (query_codes[:, None] == gallery_codes[None, :]).float()
    return scores


def oracle_metrics(dataset_dir: str | Path, dataset: RetrievalSet) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) of the oracle on ``dataset``, a retrieval set built from a split of the
    synthetic folder ``dataset_dir``.

    Raises:
        DataError: the annotation lacks the per-caption ``mentions`` (an older generator wrote it).
    """
    annotation = Path(dataset_dir) / ANNOTATION_FILE
    raw = json.loads(annotation.read_text(encoding="utf-8"))
    if raw and "mentions" not in raw[0]:
        raise DataError(f"{annotation}: records have no 'mentions' (written by an older generator); delete "
                        f"{dataset_dir} and generate it again")
    by_path = {record["file_path"]: record for record in raw}
    records = [by_path["/".join(Path(path).parts[-2:])] for path in dataset.gallery_paths]  # <split>/<file>
    gallery = [Identity(**record["attributes"]) for record in records]
    query_facts = []
    for text, owner in zip(dataset.query_texts, dataset.query_gallery_index.tolist()):
        record = records[owner]
        index = [clean_caption(c) for c in record["captions"]].index(text)
        query_facts.append(stated_facts(gallery[owner], record["mentions"][index], record["captions"][index]))
    metrics = RetrievalMetrics()
    metrics.update(oracle_scores(query_facts, gallery), dataset.query_pids, dataset.gallery_pids)
    return metrics.compute()


def oracle_table(dataset_dir: str | Path, split: str = "test") -> str:
    """The oracle's metrics on one split (``val`` or ``test``) of a generated folder, as a markdown table with
    the chance R1."""
    records = [r for r in read_cuhk_pedes(dataset_dir) if r.split == split]
    if not records:
        raise DataError(f"{dataset_dir}: the {split} split has no records")
    dataset = RetrievalSet.from_records(records)
    metrics = oracle_metrics(dataset_dir, dataset)
    lines = [f"| {split} split | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics),
             "| oracle (true attributes) | " + " | ".join(f"{value:.2f}" for value in metrics.values()) + " |"]
    chance = chance_r1(dataset.query_pids, dataset.gallery_pids)
    lines.append(f"\nchance R1: {chance:.2f}% ({len(dataset.query_texts)} queries, {len(records)} gallery images)")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Parses the arguments and prints the table."""
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic.oracle",
                                     description="The synthetic set's ceiling: ranking by the true attributes.")
    parser.add_argument("dataset_dir", help="a generated synthetic folder, e.g. data/synthetic-pedes")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="the split to rank (default test)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    print(oracle_table(args.dataset_dir, args.split))


if __name__ == "__main__":
    run_main(main)
