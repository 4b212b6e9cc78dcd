"""Text search over photos of unseen people with a trained model: the described person comes first for most
constructed captions, and a second search over the same folder reads the cached index."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic import ATTRIBUTE_KINDS, Identity, describe
from engine.folder_search import run_search
from engine.trainer import train
from utils.config import load_config

COLOUR_KINDS = ("upper_colour", "lower_colour", "shoes_colour")


@pytest.fixture(scope="module")
def search_model(tmp_path_factory) -> Path:
    """The default synthetic recipe for 5 epochs with the global alignment alone (~3 CPU minutes, cosine ranking).

    The full objective's ITM head is still weak after a CPU-sized run, so this model ranks by cosine only.
    """
    root = tmp_path_factory.mktemp("search")
    train(load_config("configs/synthetic.yaml", [
        f"data.root={root / 'data'}", f"train.output_dir={root / 'run'}", "loss.itm.weight=0", "loss.atp.weight=0",
        "loss.ara.weight=0", "eval.rerank=false", "train.epochs=5", "train.eval_every=5",
        "data.synthetic.train_ids=420"]))
    return root


def distinct_people(records: list[dict], count: int) -> list[dict]:
    """Greedily picks people whose upper, lower and shoe colours all differ from every one picked."""
    picked: list[dict] = []
    for record in records:
        if all(all(record["attributes"][k] != p["attributes"][k] for k in COLOUR_KINDS) for p in picked):
            picked.append(record)
        if len(picked) == count:
            break
    return picked


@pytest.mark.slow
def test_search_finds_described_unseen_people_and_reuses_the_index(search_model, tmp_path):
    annotation = search_model / "data" / "synthetic-pedes" / "reid_raw.json"
    checkpoint = search_model / "run" / "best.pth"
    test_records = [r for r in json.loads(annotation.read_text()) if r["split"] == "test"]
    hits = total = 0
    for trial in range(5):  # 5 galleries of 4 different-looking test people (16 photos each): chance is 1 in 4
        people = distinct_people(test_records[trial * 40:], 4)
        gallery = tmp_path / f"gallery{trial}"
        gallery.mkdir()
        for record in test_records:
            if record["id"] in {p["id"] for p in people}:
                name = f"{record['id']}_{Path(record['file_path']).name}"
                shutil.copy(annotation.parent / "imgs" / record["file_path"], gallery / name)
        rng = np.random.default_rng(trial)
        queries = [describe(Identity(**p["attributes"]), rng, kinds=ATTRIBUTE_KINDS) for p in people]
        index, results, _ = run_search(checkpoint, gallery, queries, topk=3)
        assert index.encoded == len(index) == 16
        firsts = [int(index.paths[int(r.gallery_indices[0])].name.split("_")[0]) for r in results]
        hits += sum(first == person["id"] for first, person in zip(firsts, people))
        total += len(people)
    assert hits >= 15, f"the described person came first for {hits} of {total} captions (chance: 5)"

    again, _, _ = run_search(checkpoint, gallery, queries[:1], topk=3)
    assert again.encoded == 0 and len(again) == 16  # the last gallery again: everything from the cache
