"""Result pictures: row geometry, frame colours on constructed cases, query selection, and eval.visualize."""
import csv
import json

import pytest
import torch
from PIL import Image, ImageFont

from datasets.person_search import RetrievalSet
from engine import visualize
from engine.builders import build_model, build_retrieval_set, load_splits
from engine.evaluation_run import run_evaluation
from engine.visualize import (
    FRAME,
    GAP,
    GREEN,
    MAX_TEXT_LINES,
    PAD,
    RED,
    draw_query_row,
    line_height,
    select_queries,
    wrap_text,
    write_query_grids,
)
from tests.helpers import TINY_CONFIG
from utils.checkpoint import save_atomic
from utils.config import config_to_dict, load_config

BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
CELL = (40, 20)  # (H, W)


def expected_size(slots, cell=CELL):
    """Row size from the layout rules, written out independently of RowLayout."""
    line = ImageFont.load_default().getbbox("Ag|")[3] + visualize.LINE_SPACING
    width = 2 * PAD + slots * (cell[1] + 2 * FRAME) + (slots - 1) * GAP
    height = PAD + (1 + MAX_TEXT_LINES) * line + PAD + (cell[0] + 2 * FRAME) + line + PAD
    return width, height


def frame_box(slot, cell=CELL):
    """(left, top, right, bottom) of a slot's framed box, right/bottom exclusive."""
    line = line_height()
    left = PAD + slot * (cell[1] + 2 * FRAME + GAP)
    top = PAD + (1 + MAX_TEXT_LINES) * line + PAD
    return left, top, left + cell[1] + 2 * FRAME, top + cell[0] + 2 * FRAME


def frame_colours(image, slot, cell=CELL):
    """Colours at the middle of the four frame edges, one pixel inside the box border."""
    left, top, right, bottom = frame_box(slot, cell)
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    points = [(left + 1, mid_y), (right - 2, mid_y), (mid_x, top + 1), (mid_x, bottom - 2)]
    return {image.getpixel(p) for p in points}


def solid(colour, size=(30, 70)):
    return Image.new("RGB", size, colour)


def test_row_size_and_green_frames_on_positives():
    positives = {0, 3, 7}
    images = [solid(BLUE, (15 + i, 60)) for i in range(9)]  # 9 images in 10 slots: the last stays empty
    matches = [i in positives for i in range(9)]
    row = draw_query_row("query 0 | first true match at rank 1", "a man in a red jacket", images,
                         [0.5 - 0.01 * i for i in range(9)], matches, slots=10, cell_size=CELL)
    assert row.size == expected_size(10)
    for slot in range(9):
        assert frame_colours(row, slot) == {GREEN if slot in positives else RED}, slot
        left, top, right, bottom = frame_box(slot)
        assert row.getpixel(((left + right) // 2, (top + bottom) // 2)) == BLUE  # the image sits inside
        if slot:
            assert row.getpixel((left - 1, (top + bottom) // 2)) == WHITE  # the gap between boxes
    assert frame_colours(row, 9) == {WHITE}


def test_row_without_ground_truth_has_neutral_frames_and_same_size():
    row = draw_query_row("query 1", "text", [solid(BLUE)] * 3, [1.0, 0.5, 0.2], None, slots=3, cell_size=CELL)
    assert row.size == expected_size(3)
    assert all(frame_colours(row, slot) == {visualize.NEUTRAL} for slot in range(3))


def test_row_rejects_more_images_than_slots_or_missing_scores():
    with pytest.raises(ValueError, match="at most 2 images"):
        draw_query_row("t", "q", [solid(BLUE)] * 3, [0.0] * 3, slots=2, cell_size=CELL)
    with pytest.raises(ValueError, match="one score"):
        draw_query_row("t", "q", [solid(BLUE)] * 2, [0.0], slots=2, cell_size=CELL)


def test_wrap_text_fits_width_and_truncates_long_text():
    font = ImageFont.load_default()
    text = " ".join(f"word{i}" for i in range(60))
    lines = wrap_text(text, 120, font)
    assert len(lines) == MAX_TEXT_LINES
    assert lines[-1].endswith("...")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert " ".join(lines[:-1]).split() == text.split()[:len(" ".join(lines[:-1]).split())]
    assert wrap_text("short text", 120, font) == ["short text"]


def test_select_worst_orders_by_first_positive_rank_then_index():
    ranks = torch.tensor([3, 1, 7, 7, 2, 9])
    assert select_queries(ranks, 3, "worst") == [5, 2, 3]
    assert select_queries(ranks, 100, "worst") == [5, 2, 3, 0, 4, 1]


def test_select_random_is_seeded_distinct_and_clamped():
    ranks = torch.ones(100, dtype=torch.long)
    first = select_queries(ranks, 5, "random", seed=3)
    assert first == select_queries(ranks, 5, "random", seed=3)
    assert first != select_queries(ranks, 5, "random", seed=4)
    assert len(set(first)) == 5 and first == sorted(first) and all(0 <= q < 100 for q in first)
    assert select_queries(torch.ones(4, dtype=torch.long), 10, "random") == [0, 1, 2, 3]


def test_select_ids_and_errors():
    ranks = torch.ones(5, dtype=torch.long)
    assert select_queries(ranks, 0, "ids", ids=[4, 0, 2]) == [4, 0, 2]
    with pytest.raises(ValueError, match=r"\[5, 7\] are out of range"):
        select_queries(ranks, 0, "ids", ids=[1, 5, 7])
    with pytest.raises(ValueError, match="needs query indices"):
        select_queries(ranks, 2, "ids")
    with pytest.raises(ValueError, match="unknown visualize mode 'best'.*random, worst, ids"):
        select_queries(ranks, 2, "best")


def test_query_grids_frame_by_person_id_and_paginate(tmp_path):
    colours = [(255, 255, 0), BLUE, (0, 255, 255), (255, 0, 255)]
    paths = []
    for i, colour in enumerate(colours):
        paths.append(tmp_path / f"g{i}.png")
        solid(colour).save(paths[-1])
    dataset = RetrievalSet(paths, torch.tensor([7, 8, 7, 9]), ["q zero", "q one", "q two"], torch.tensor([7, 8, 9]),
                           torch.tensor([0, 1, 3]))
    per_query = {"first_positive_rank": torch.tensor([2, 1, 4]),
                 "top_indices": torch.tensor([[1, 0, 3, 2], [1, 2, 0, 3], [0, 1, 2, 3]]),
                 "top_scores": torch.rand(3, 4)}
    written = write_query_grids(per_query, dataset, [0, 2, 1], tmp_path / "grid.png", "global", cell_size=CELL,
                                slots=4, rows_per_page=2)
    assert [p.name for p in written] == ["grid_01.png", "grid_02.png"]
    width, height = expected_size(4)
    pages = [Image.open(p).convert("RGB") for p in written]
    assert pages[0].size == (width, 2 * height) and pages[1].size == (width, height)
    rows = [pages[0].crop((0, 0, width, height)), pages[0].crop((0, height, width, 2 * height)), pages[1]]
    for row, q in zip(rows, [0, 2, 1]):
        for slot, g in enumerate(per_query["top_indices"][q].tolist()):
            positive = dataset.gallery_pids[g] == dataset.query_pids[q]
            assert frame_colours(row, slot) == {GREEN if positive else RED}, (q, slot)


def test_eval_visualize_writes_grids_and_per_query_csv(tmp_path):
    torch.manual_seed(0)
    config = load_config(TINY_CONFIG)
    checkpoint = tmp_path / "run" / "best.pth"
    save_atomic({"model": build_model(config).state_dict(), "config": config_to_dict(config)}, checkpoint)
    overrides = [f"data.root={tmp_path / 'data'}", "data.synthetic.train_ids=9", "data.synthetic.val_ids=1",
                 "data.synthetic.test_ids=2", "eval.visualize=3", "eval.visualize_mode=worst",
                 "eval.image_to_text=true"]
    results = run_evaluation(str(checkpoint), None, overrides)
    evaluated = load_config(TINY_CONFIG, overrides)
    dataset = build_retrieval_set(evaluated, load_splits(evaluated)["test"])
    out = tmp_path / "run" / "eval_best_test"
    per_query = results["reranked_per_query"]

    with open(out / "per_query_reranked.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["first_positive_rank"]) for r in table] == per_query["first_positive_rank"].tolist()
    assert [int(r["pid"]) for r in table] == dataset.query_pids.tolist()
    assert [r["top1_path"] for r in table] == [str(dataset.gallery_paths[g]) for g in per_query["top_indices"][:, 0]]
    assert [r["query_text"] for r in table] == dataset.query_texts

    grid = Image.open(out / "visualize" / "reranked_worst.png").convert("RGB")
    width, height = expected_size(10, visualize.DEFAULT_CELL)
    assert grid.size == (width, 3 * height)
    worst = torch.sort(per_query["first_positive_rank"], descending=True, stable=True).indices[:3].tolist()
    for row_number, q in enumerate(worst):
        row = grid.crop((0, row_number * height, width, (row_number + 1) * height))
        for slot, g in enumerate(per_query["top_indices"][q].tolist()):
            positive = bool(dataset.gallery_pids[g] == dataset.query_pids[q])
            assert frame_colours(row, slot, visualize.DEFAULT_CELL) == {GREEN if positive else RED}, (q, slot)
    record = json.loads((out / "results.json").read_text())
    assert record["image_to_text"] == pytest.approx(results["image_to_text"])
