"""Results files: the side-by-side table of several results.json, eval.py --compare, the per-query CSV, and
image-to-text metrics in results.json."""
import csv
import json
import sys

import pytest
import torch

import eval as eval_entry
from datasets.person_search import RetrievalSet
from engine.results import compare_results, write_per_query_csv, write_results
from utils.config import load_config
from utils.errors import DataError

RUN_A = {
    "dataset": "cuhk_pedes", "split": "test", "checkpoint_sha256": "0123456789ab",
    "stages": {"global": {"R1": 60.0, "R5": 80.125, "R10": 87.5, "mAP": 55.25, "mINP": 40.0},
               "reranked": {"R1": 65.5, "R5": 82.0, "R10": 88.0, "mAP": 58.0, "mINP": 42.004}},
}
RUN_B = {
    "dataset": "rstpreid", "split": "val", "checkpoint_sha256": "ba7816bf8f01",
    "stages": {"global": {"R1": 50.0, "R5": 70.0, "R10": 80.0, "mAP": 40.0, "mINP": 20.0}},
    "image_to_text": {"R1": 45.0, "R5": 66.666, "R10": 75.0, "mAP": 30.0, "mINP": 10.0},
}
EXPECTED_TABLE = """\
| run | dataset | split | checkpoint | stage | R1 | R5 | R10 | mAP | mINP |
|---|---|---|---|---|---:|---:|---:|---:|---:|
| {a} | cuhk_pedes | test | 0123456789ab | global | 60.00 | 80.12 | 87.50 | 55.25 | 40.00 |
| {a} | cuhk_pedes | test | 0123456789ab | reranked | 65.50 | 82.00 | 88.00 | 58.00 | 42.00 |
| {b} | rstpreid | val | ba7816bf8f01 | global | 50.00 | 70.00 | 80.00 | 40.00 | 20.00 |
| {b} | rstpreid | val | ba7816bf8f01 | image-to-text | 45.00 | 66.67 | 75.00 | 30.00 | 10.00 |"""


@pytest.fixture
def two_runs(tmp_path):
    paths = []
    for name, record in (("run_a", RUN_A), ("run_b", RUN_B)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "results.json")
        paths[-1].write_text(json.dumps(record))
    return paths


def test_compare_tabulates_runs_and_stages(two_runs):
    expected = EXPECTED_TABLE.format(a=two_runs[0].parent, b=two_runs[1].parent)
    assert compare_results(two_runs) == expected


def test_eval_compare_prints_and_writes_the_table(two_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", ["eval.py", "--compare", *map(str, two_runs), "--out", str(out)])
    eval_entry.main()
    expected = EXPECTED_TABLE.format(a=two_runs[0].parent, b=two_runs[1].parent)
    assert capsys.readouterr().out == expected + "\n"
    assert out.read_text() == expected + "\n"


def test_compare_errors_name_the_file_and_key(two_runs, tmp_path):
    with pytest.raises(DataError, match="results file not found: .*missing.json"):
        compare_results([two_runs[0], tmp_path / "missing.json"])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({key: value for key, value in RUN_A.items() if key != "split"}))
    with pytest.raises(ValueError, match="broken.json: missing key 'split'"):
        compare_results([broken])
    broken.write_text(json.dumps(dict(RUN_A, stages={"global": {"R1": 1.0}})))
    with pytest.raises(ValueError, match=r"broken.json: stage 'global' lacks metrics \['R5', 'R10', 'mAP', 'mINP'\]"):
        compare_results([broken])
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        compare_results([broken])


def small_retrieval_set():
    return RetrievalSet(["g0.jpg", "g1.jpg", "g2.jpg"], torch.tensor([5, 6, 5]),
                        ["a man, in red", 'a "quoted" woman'], torch.tensor([5, 6]), torch.tensor([0, 1]))


def per_query_results():
    return {"first_positive_rank": torch.tensor([2, 1]), "average_precision": torch.tensor([7 / 12, 1.0]).double(),
            "inverse_negative_penalty": torch.tensor([2 / 3, 1.0]).double(),
            "top_indices": torch.tensor([[1, 0, 2], [1, 2, 0]]), "top_scores": torch.rand(2, 3)}


def test_per_query_csv_rows(tmp_path):
    path = write_per_query_csv(per_query_results(), small_retrieval_set(), tmp_path / "q.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["query_index", "pid", "first_positive_rank", "average_precision", "inverse_negative_penalty", "top1_pid",
         "top1_path", "query_text"],
        ["0", "5", "2", "0.583333", "0.666667", "6", "g1.jpg", "a man, in red"],
        ["1", "6", "1", "1.000000", "1.000000", "6", "g1.jpg", 'a "quoted" woman'],
    ]


def test_write_results_keeps_image_to_text_and_writes_csv_per_stage(tmp_path):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"abc")  # sha256 ba7816bf8f01cfea...
    metrics = {"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 79.1667, "mINP": 83.3333}
    results = {"global": metrics, "reranked": metrics, "image_to_text": dict(metrics, R1=66.6667),
               "global_per_query": per_query_results(), "reranked_per_query": per_query_results(),
               "chance_r1": 50.0, "num_queries": 2, "num_gallery": 3}
    config = load_config("configs/synthetic.yaml")
    path = write_results(results, config, checkpoint, tmp_path / "eval", small_retrieval_set())
    record = json.loads(path.read_text())
    assert record["image_to_text"]["R1"] == 66.6667
    assert record["checkpoint_sha256"] == "ba7816bf8f01"
    assert "image-to-text (global) | 66.67" in (tmp_path / "eval" / "results.md").read_text()
    for stage in ("global", "reranked"):
        assert (tmp_path / "eval" / f"per_query_{stage}.csv").read_text().count("\n") == 3
    last_row = compare_results([path]).splitlines()[-1]
    assert last_row.endswith("| image-to-text | 66.67 | 100.00 | 100.00 | 79.17 | 83.33 |")
