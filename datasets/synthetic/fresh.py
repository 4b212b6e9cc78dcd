"""Fresh training photos: each synthetic training image is drawn anew for every (epoch, sample).

The annotation records the attributes of the person in each image (bag side as seen), so the image can be
re-rendered with new viewing conditions (background, placement, lighting, occlusion) while its captions stay
true. A small model then cannot memorise a fixed set of photos per person. The render seed is derived from
the ``sample_seed`` the training sampler yields, so a resumed run draws the same pictures.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.synthetic.generate import ANNOTATION_FILE, METADATA_FILE
from datasets.synthetic.identity import Identity
from datasets.synthetic.render import render_person

RENDER_STREAM = 0x5EED  # separates the render generator from the sample's augmentation and masking seeds


class FreshRenders:
    """``(image_path, sample_seed) -> PIL image``: the person of ``image_path`` under new conditions.

    The synthetic set's training image loader when ``data.synthetic.fresh_renders`` is on
    (``datasets.registry.training_image_loader``).

    Args:
        dataset_dir: the synthetic folder (``reid_raw.json`` with per-image ``attributes``, ``generator.json``).
    """

    def __init__(self, dataset_dir: str | Path):
        dataset_dir = Path(dataset_dir)
        raw = json.loads((dataset_dir / ANNOTATION_FILE).read_text(encoding="utf-8"))
        self.people = {record["file_path"]: Identity(**record["attributes"]) for record in raw}
        height, width = json.loads((dataset_dir / METADATA_FILE).read_text(encoding="utf-8"))["image_size"]
        self.size = (height, width)

    def __call__(self, image_path: str | Path, sample_seed: int) -> Image.Image:
        person = self.people["/".join(Path(image_path).parts[-2:])]  # key: <split>/<file>, as in the annotation
        return render_person(person, np.random.default_rng([sample_seed, RENDER_STREAM]), self.size)
