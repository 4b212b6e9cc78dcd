"""Pictures of retrieval results: per query, its text above its top-ranked gallery images.

A row shows a title line, the query text wrapped to at most ``MAX_TEXT_LINES`` lines, and ``slots``
cells. Each cell is the gallery image fitted (aspect kept, padded) into a fixed ``cell_size`` inside a
frame of ``FRAME`` pixels — green for a true match, red otherwise, grey when there is no ground truth —
with "rank: score" under it. Rows have a fixed size, so a page of rows has a bounded size:

    width  = 2·PAD + slots·(W + 2·FRAME) + (slots − 1)·GAP
    height = PAD + (1 + MAX_TEXT_LINES)·line + PAD + (H + 2·FRAME) + line + PAD
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from datasets.images import load_rgb
from datasets.person_search import RetrievalSet

log = logging.getLogger(__name__)

PAD = 6  # outer margin and space between header, cells and scores
GAP = 6  # horizontal space between cells
FRAME = 3  # frame thickness around each image
LINE_SPACING = 3
MAX_TEXT_LINES = 3  # query lines shown; longer texts end with "..."
DEFAULT_CELL = (128, 64)  # (H, W) of each image
DEFAULT_SLOTS = 10
ROWS_PER_PAGE = 8

BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (235, 235, 235)
TEXT_COLOUR = (0, 0, 0)
SEPARATOR = (190, 190, 190)
GREEN = (0, 170, 0)  # a true match
RED = (210, 0, 0)  # not a match
NEUTRAL = (160, 160, 160)  # no ground truth (folder search)

SELECTION_MODES = ("random", "worst", "ids")


def default_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def line_height(font=None) -> int:
    """Pixel height of one text line in ``font`` (default: Pillow's built-in font)."""
    return (font or default_font()).getbbox("Ag|")[3] + LINE_SPACING


@dataclass(frozen=True)
class RowLayout:
    """Pixel geometry of one query row (see the module docstring); ``cell_size`` is (H, W) of each image."""

    slots: int
    cell_size: tuple[int, int]
    line: int

    @property
    def box_width(self) -> int:
        return self.cell_size[1] + 2 * FRAME

    @property
    def box_height(self) -> int:
        return self.cell_size[0] + 2 * FRAME

    @property
    def header_height(self) -> int:
        return PAD + (1 + MAX_TEXT_LINES) * self.line

    @property
    def width(self) -> int:
        return 2 * PAD + self.slots * self.box_width + (self.slots - 1) * GAP

    @property
    def height(self) -> int:
        return self.header_height + PAD + self.box_height + self.line + PAD

    def cell_box(self, slot: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the framed box of ``slot`` (0-based); right and bottom exclusive."""
        left = PAD + slot * (self.box_width + GAP)
        top = self.header_height + PAD
        return left, top, left + self.box_width, top + self.box_height


def wrap_text(text: str, max_width: int, font, max_lines: int = MAX_TEXT_LINES) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; a last line that does not fit ends with ``...``."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + " ...") > max_width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + " ..."]
    return lines


def draw_query_row(title: str, text: str, images: Sequence[Image.Image], scores: Sequence[float],
                   matches: Sequence[bool] | None = None, slots: int = DEFAULT_SLOTS,
                   cell_size: tuple[int, int] = DEFAULT_CELL) -> Image.Image:
    """Draws one query and its ranked images.

    Args:
        title: first header line (e.g. query id, person id, rank of the first true match).
        text: the query text, wrapped under the title.
        images: the ranked gallery images, best first; at most ``slots``.
        scores: one display score per image.
        matches: per image, whether it shows the queried person (green/red frame); None draws grey frames.
        slots: cells in the row; fixes the row width whatever the number of images.
        cell_size: (H, W) each image is fitted into.

    Returns:
        An RGB image of ``RowLayout(slots, cell_size, line_height()).width × .height`` pixels.
    """
    if len(images) > slots or len(scores) != len(images) or (matches is not None and len(matches) != len(images)):
        raise ValueError(f"expected at most {slots} images with one score (and match flag) each, got "
                         f"{len(images)} images, {len(scores)} scores, "
                         f"{'no' if matches is None else len(matches)} match flags")
    font = default_font()
    layout = RowLayout(slots, tuple(cell_size), line_height(font))
    row = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(row)
    for i, line in enumerate([title, *wrap_text(text, layout.width - 2 * PAD, font)]):
        draw.text((PAD, PAD + i * layout.line), line, fill=TEXT_COLOUR, font=font)
    height, width = layout.cell_size
    for slot, (image, score) in enumerate(zip(images, scores)):
        left, top, right, bottom = layout.cell_box(slot)
        colour = NEUTRAL if matches is None else (GREEN if matches[slot] else RED)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=colour)
        row.paste(ImageOps.pad(image.convert("RGB"), (width, height), color=CELL_BACKGROUND),
                  (left + FRAME, top + FRAME))
        draw.text((left, bottom + 1), f"{slot + 1}: {score:.3f}", fill=TEXT_COLOUR, font=font)
    return row


def save_pages(rows: Sequence[Image.Image], path: str | Path, rows_per_page: int = ROWS_PER_PAGE) -> list[Path]:
    """Stacks equal-sized rows into pages of at most ``rows_per_page``, writes them as PNG, returns their paths.

    Args:
        rows: rows from :func:`draw_query_row`, all of one size.
        path: the PNG path; with several pages they are named ``<stem>_01<suffix>``, ``<stem>_02<suffix>``, ...
    """
    if not rows:
        raise ValueError("no rows to draw")
    if rows_per_page < 1:
        raise ValueError(f"rows_per_page must be >= 1, got {rows_per_page}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = rows[0].size
    pages = [rows[i:i + rows_per_page] for i in range(0, len(rows), rows_per_page)]
    written = []
    for number, page_rows in enumerate(pages, start=1):
        page = Image.new("RGB", (width, height * len(page_rows)), BACKGROUND)
        draw = ImageDraw.Draw(page)
        for i, row in enumerate(page_rows):
            page.paste(row, (0, i * height))
            if i:
                draw.line((0, i * height, width - 1, i * height), fill=SEPARATOR)
        target = path if len(pages) == 1 else path.with_name(f"{path.stem}_{number:02d}{path.suffix}")
        page.save(target)
        written.append(target)
    return written


def select_queries(first_positive_rank: torch.Tensor, count: int, mode: str, seed: int = 0,
                   ids: Sequence[int] = ()) -> list[int]:
    """Chooses the queries to draw.

    Args:
        first_positive_rank: (Q,) 1-based rank of each query's first true match.
        count: how many queries (``random``, ``worst``); clamped to Q.
        mode: ``random`` (seeded, returned in ascending order), ``worst`` (largest first-positive rank
            first, ties to the lower query index) or ``ids`` (exactly ``ids``, in the given order).
        ids: query indices for ``ids`` mode.
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown visualize mode {mode!r}; known: {', '.join(SELECTION_MODES)}")
    num_queries = first_positive_rank.numel()
    if mode == "ids":
        if not ids:
            raise ValueError("visualize_mode=ids needs query indices in eval.visualize_ids, got none")
        bad = [int(i) for i in ids if not 0 <= int(i) < num_queries]
        if bad:
            raise ValueError(f"visualize_ids {bad} are out of range: there are {num_queries} queries")
        return [int(i) for i in ids]
    if count < 0:
        raise ValueError(f"the number of queries to draw must be >= 0, got {count}")
    count = min(count, num_queries)
    if mode == "random":
        order = torch.randperm(num_queries, generator=torch.Generator().manual_seed(seed))
        return sorted(order[:count].tolist())
    order = torch.sort(first_positive_rank.cpu(), descending=True, stable=True).indices  # worst
    return order[:count].tolist()


def write_query_grids(per_query: dict[str, torch.Tensor], dataset: RetrievalSet, query_ids: Sequence[int],
                      output_path: str | Path, stage: str, cell_size: tuple[int, int] = DEFAULT_CELL,
                      slots: int = DEFAULT_SLOTS, rows_per_page: int = ROWS_PER_PAGE) -> list[Path]:
    """Draws the chosen queries of one evaluation stage with green/red frames; returns the written paths.

    Args:
        per_query: ``results['<stage>_per_query']`` of :func:`engine.evaluator.evaluate`
            (``first_positive_rank`` (Q,), ``top_indices`` (Q, n), ``top_scores`` (Q, n)).
        dataset: the evaluated retrieval set (gallery paths and person ids, query texts and ids).
        query_ids: the queries to draw (see :func:`select_queries`).
        output_path: PNG path (pages are numbered when there are more than ``rows_per_page`` queries).
        cell_size: (H, W) of each image.
        slots: images per query (the first ``slots`` of ``top_indices``).
    """
    rows = []
    for q in query_ids:
        shown = per_query["top_indices"][q, :slots].tolist()
        pid, first_rank = int(dataset.query_pids[q]), int(per_query["first_positive_rank"][q])
        title = f"query {q} | person {pid} | {stage} | first true match at rank {first_rank}"
        rows.append(draw_query_row(title, dataset.query_texts[q], [load_rgb(dataset.gallery_paths[g]) for g in shown],
                                   per_query["top_scores"][q, :slots].tolist(),
                                   [int(dataset.gallery_pids[g]) == pid for g in shown], slots, cell_size))
    written = save_pages(rows, output_path, rows_per_page)
    log.info("drew %d queries (%s stage) into %s", len(rows), stage, ", ".join(map(str, written)))
    return written
