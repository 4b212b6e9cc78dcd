"""Text search over a folder with the trained tiny model: the described person comes first, and the second
search over the same folder reads the cached index instead of encoding again."""
import json
import shutil

import numpy as np

from datasets.synthetic import ATTRIBUTE_KINDS, Identity, describe
from engine.folder_search import run_search

COLOUR_KINDS = ("upper_colour", "lower_colour", "shoes_colour")


def distinct_people(records: list[dict], count: int) -> list[dict]:
    """Greedily picks test people whose upper, lower and shoe colours differ from every one picked."""
    picked: list[dict] = []
    for record in records:
        attrs = record["attributes"]
        if all(all(attrs[k] != p["attributes"][k] for k in COLOUR_KINDS) for p in picked):
            picked.append(record)
        if len(picked) == count:
            break
    return picked


def test_search_returns_the_described_person_first_and_reuses_the_index(trained_run, tmp_path):
    annotation = trained_run.data_root / "synthetic-pedes" / "reid_raw.json"
    test_records = [r for r in json.loads(annotation.read_text()) if r["split"] == "test"]
    people = distinct_people(test_records, 4)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for record in test_records:
        if record["id"] in {p["id"] for p in people}:
            shutil.copy(annotation.parent / "imgs" / record["file_path"], gallery / f"{record['id']}_{len(list(gallery.iterdir()))}.jpg")
    rng = np.random.default_rng(0)
    queries = [describe(Identity(**person["attributes"]), rng, kinds=ATTRIBUTE_KINDS) for person in people]

    index, results, _ = run_search(trained_run.checkpoint, gallery, queries, topk=3)
    assert index.encoded == len(index)
    firsts = [int(index.paths[int(result.gallery_indices[0])].name.split("_")[0]) for result in results]
    assert firsts == [person["id"] for person in people], queries

    again, _, _ = run_search(trained_run.checkpoint, gallery, queries[:1], topk=3)
    assert again.encoded == 0 and len(again) == len(index)  # everything came from the cache
