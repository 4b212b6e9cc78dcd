"""Heatmap panels: a photo, then one overlay per word, in labelled rows (Pillow only).

Each overlay rescales its map M to m̂ = (M − min M) / (max M − min M) (so the shape of a weak map stays visible;
the label under it says how strong it is), colours it with a blue → green → yellow → red ramp and blends it over
the photo with opacity ``OVERLAY_OPACITY · m̂``: where m̂ is 0 the photo shows unchanged, as does a constant map.
Layout and fonts are those of :mod:`engine.visualize`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from engine.visualize import (
    BACKGROUND,
    CELL_BACKGROUND,
    DEFAULT_CELL,
    GAP,
    PAD,
    TEXT_COLOUR,
    default_font,
    line_height,
    wrap_text,
)

OVERLAY_OPACITY = 0.75
CELLS_PER_LINE = 10
LABEL_LINES = 2  # text lines under each cell
# (position on the ramp, RGB)
RAMP = ((0.0, (30, 40, 200)), (0.35, (0, 170, 230)), (0.6, (60, 200, 60)), (0.8, (250, 210, 0)), (1.0, (220, 20, 20)))


@dataclass
class Cell:
    """One cell of a panel: a heatmap over the photo (None: the photo itself) and its label lines."""

    heatmap: torch.Tensor | None  # (H, W) at the photo's pixels, >= 0
    label: tuple[str, ...]


def overlay(photo: Image.Image, heatmap: torch.Tensor) -> Image.Image:
    """The photo with ``heatmap`` (H, W), the photo's size, blended over it (module docstring)."""
    values = heatmap.detach().float().cpu().numpy()
    if values.shape != (photo.height, photo.width):
        raise ValueError(f"heatmap {values.shape} does not match the photo's {photo.height}x{photo.width} pixels")
    spread = values.max() - values.min()
    scaled = (values - values.min()) / spread if spread > 0 else np.zeros_like(values)  # (H, W) in [0, 1]
    stops = [stop for stop, _ in RAMP]
    rgb = np.stack([np.interp(scaled, stops, [colour[c] for _, colour in RAMP]) for c in range(3)], axis=-1)
    opacity = OVERLAY_OPACITY * scaled[..., None]
    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32)
    blended = (1 - opacity) * pixels + opacity * rgb  # rgb: (H, W, 3) on the RAMP
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def draw_panel(photo: Image.Image, title: str, text: str, rows: Sequence[tuple[str, Sequence[Cell]]],
               cell_size: tuple[int, int] = DEFAULT_CELL) -> Image.Image:
    """An RGB image: a title, the wrapped text (the caption), then each named row of cells (at most
    :data:`CELLS_PER_LINE` per line).

    Args:
        photo: the image the heatmaps are about.
        rows: ``(row name, cells)``; each row's cells wrap onto further lines.
        cell_size: (H, W) each image is fitted into.
    """
    font = default_font()
    line = line_height(font)
    height, width = cell_size
    columns = min(CELLS_PER_LINE, max((len(cells) for _, cells in rows), default=1))
    labels = [title, *(name for name, _ in rows)]
    panel_width = max(2 * PAD + columns * width + (columns - 1) * GAP,
                      2 * PAD + max(int(font.getlength(label)) + 1 for label in labels))
    header = wrap_text(text, panel_width - 2 * PAD, font)
    cell_height = height + LABEL_LINES * line + PAD
    lines_of = [-(-len(cells) // columns) for _, cells in rows]
    top = PAD + (1 + len(header)) * line  # below the title and the caption
    panel_height = top + sum(line + PAD + count * cell_height for count in lines_of)
    panel = Image.new("RGB", (panel_width, panel_height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for i, text_line in enumerate([title, *header]):
        draw.text((PAD, PAD + i * line), text_line, fill=TEXT_COLOUR, font=font)
    for (name, cells), count in zip(rows, lines_of):
        draw.text((PAD, top + PAD // 2), name, fill=TEXT_COLOUR, font=font)
        top += line + PAD
        for index, cell in enumerate(cells):
            left = PAD + (index % columns) * (width + GAP)
            cell_top = top + (index // columns) * cell_height
            picture = photo if cell.heatmap is None else overlay(photo, cell.heatmap)
            panel.paste(ImageOps.pad(picture.convert("RGB"), (width, height), color=CELL_BACKGROUND), (left, cell_top))
            for j, label in enumerate(cell.label[:LABEL_LINES]):
                draw.text((left, cell_top + height + j * line), _fit(label, width, font), fill=TEXT_COLOUR, font=font)
        top += count * cell_height
    return panel


def _fit(text: str, width: int, font) -> str:
    """``text`` cut to ``width`` pixels."""
    while text and font.getlength(text) > width:
        text = text[:-1]
    return text
