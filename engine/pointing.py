"""The pointing game: does a word's heatmap peak inside the image region of the part the word names?

For each word w that names part p (``regions.words`` of the annotation, see datasets/regions.py), with its
heatmap M_w at the image's pixels and the part's region R_p in the explained image,

    hit_w     = 1[argmax M_w ∈ R_p]                 (ties: the first maximum in row-major order;
                                                      an all-zero map points nowhere, a miss)
    hit_rate  = 100 · Σ_w hit_w / #words            (overall and per part)
    baseline  = 100 · mean_w |R_p| / (H · W)        (the hit rate of a point drawn uniformly over the image)

A word whose part is not visible in the explained image (absent or fully covered) is not counted.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def peak(heatmap: torch.Tensor) -> tuple[int, int] | None:
    """(row, column) of the first maximum of a (H, W) map, or None when the map has no positive value."""
    if not bool((heatmap > 0).any()):
        return None
    flat = int(torch.argmax(heatmap))
    return flat // heatmap.shape[1], flat % heatmap.shape[1]


class PointingTally:
    """Accumulates pointing-game hits per part; :meth:`summary` gives the numbers of the module docstring."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = defaultdict(int)
        self.words: dict[str, int] = defaultdict(int)
        self.area: dict[str, float] = defaultdict(float)

    def add(self, part: str, heatmap: torch.Tensor, region: np.ndarray) -> bool | None:
        """Scores one word's (H, W) heatmap against its part's (H, W) region; returns the hit, or None when the
        region is empty (not counted)."""
        if tuple(heatmap.shape) != region.shape:
            raise ValueError(f"heatmap {tuple(heatmap.shape)} and region {region.shape} differ in size")
        if not region.any():
            return None
        point = peak(heatmap)
        hit = point is not None and bool(region[point])
        self.hits[part] += hit
        self.words[part] += 1
        self.area[part] += float(region.mean())
        return hit

    def summary(self) -> dict:
        """``{hit_rate, words, baseline, parts: {part: {hit_rate, words, baseline}}}``, rates in percent."""
        def rates(hits: int, words: int, area: float) -> dict:
            return {"hit_rate": 100 * hits / words if words else 0.0, "words": words,
                    "baseline": 100 * area / words if words else 0.0}

        overall = rates(sum(self.hits.values()), sum(self.words.values()), sum(self.area.values()))
        overall["parts"] = {part: rates(self.hits[part], self.words[part], self.area[part])
                            for part in sorted(self.words)}
        return overall
