"""Optional per-image part regions of an annotation record: where each named part of the person is, and which
caption words name it (the synthetic generator writes them; real datasets have none).

A record may carry::

    "regions": {"size": [H, W],
                "parts": {"upper": "0 812 9 55 ...", "hair": "...", ...},
                "words": [[null, null, "upper", "upper", null, ...], ...]}

``parts``: each part's H×W pixel mask, run-length encoded over the row-major flattened mask as space-separated
run lengths that alternate outside / inside, starting with outside (0 when the first pixel is inside) and summing
to H·W. ``words``: one list per caption of the record, one entry per space-separated word of the cleaned caption
(:func:`datasets.records.clean_caption`): the part that word names (the garment, its colour or pattern), or null.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARTS = ("upper", "lower", "shoes", "bag", "hat", "hair")


def encode_mask(mask: np.ndarray) -> str:
    """Run lengths of a bool (H, W) mask in the format above."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # indices where a new run starts
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return " ".join(map(str, runs))


def _run_lengths(runs: str, size: tuple[int, int]) -> np.ndarray:
    """The run lengths as an int array, checked to be non-negative and to cover the H×W pixels exactly."""
    try:
        lengths = np.array(runs.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"run lengths must be space-separated integers, got {runs!r:.60}") from None
    height, width = size
    if (lengths < 0).any() or lengths.sum() != height * width:
        raise ValueError(f"run lengths must be non-negative and sum to {height}x{width}={height * width}, "
                         f"got a sum of {int(lengths.sum())}")
    return lengths


def decode_mask(runs: str, size: tuple[int, int]) -> np.ndarray:
    """The bool (H, W) mask of run lengths ``runs`` (see the module docstring)."""
    lengths = _run_lengths(runs, size)
    values = np.arange(len(lengths)) % 2 == 1  # outside, inside, outside, ...
    return np.repeat(values, lengths).reshape(size)


@dataclass(frozen=True)
class PartRegions:
    """The parsed ``regions`` field of one record."""

    size: tuple[int, int]  # (H, W) of the masks (the image's size)
    runs: dict[str, str]  # part name → run-length encoded mask
    caption_words: dict[str, tuple[str | None, ...]]  # cleaned caption → the part each word names (None: no part)

    def mask(self, part: str) -> np.ndarray:
        """The bool (H, W) mask of ``part`` (all False when the person has no such part)."""
        if part not in self.runs:
            return np.zeros(self.size, dtype=bool)
        return decode_mask(self.runs[part], self.size)


def parse_regions(raw: object, captions: tuple[str, ...]) -> PartRegions:
    """Checks and parses a record's ``regions`` value given its cleaned captions.

    Raises ValueError naming what is wrong (the caller adds the file and record).
    """
    if not isinstance(raw, dict) or set(raw) != {"size", "parts", "words"}:
        raise ValueError(f"expected an object with keys size, parts, words, got {type(raw).__name__}"
                         + (f" with keys {sorted(raw)}" if isinstance(raw, dict) else ""))
    size, parts, words = raw["size"], raw["parts"], raw["words"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"'size' must be [height, width] of positive integers, got {size!r}")
    if not isinstance(parts, dict) or not set(parts) <= set(PARTS):
        raise ValueError(f"'parts' must map part names among {PARTS} to run lengths, got "
                         f"{sorted(parts) if isinstance(parts, dict) else type(parts).__name__}")
    for part, runs in parts.items():
        if not isinstance(runs, str):
            raise ValueError(f"part {part!r}: run lengths must be a string of integers, got {type(runs).__name__}")
        try:
            _run_lengths(runs, (size[0], size[1]))
        except ValueError as error:
            raise ValueError(f"part {part!r}: {error}") from None
    if not isinstance(words, list) or len(words) != len(captions):
        raise ValueError(f"'words' must hold one list per caption ({len(captions)}), got {words!r:.80}")
    for caption, labels in zip(captions, words):
        count = len(caption.split(" "))
        if not isinstance(labels, list) or len(labels) != count or any(
                label is not None and label not in PARTS for label in labels):
            raise ValueError(f"'words' of caption {caption!r:.60} must list {count} entries, each a part name "
                             f"or null, got {labels!r:.80}")
    return PartRegions((size[0], size[1]), dict(parts),
                       {caption: tuple(labels) for caption, labels in zip(captions, words)})
