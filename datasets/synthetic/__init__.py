"""The procedural synthetic pedestrian dataset: the project's built-in default and test data.

Pieces: :func:`sample_identity` (attributes) → :func:`render_person` (image) and :func:`describe`
(captions) → :func:`generate_dataset` (a CUHK-PEDES-format folder). Run ``python -m datasets.synthetic``.
"""
from datasets.synthetic.captions import describe, sample_mentions
from datasets.synthetic.generate import ANNOTATION_FILE, generate_dataset, split_layout
from datasets.synthetic.identity import ATTRIBUTE_KINDS, COLOURS, HAIR_COLOURS, Identity, sample_identity
from datasets.synthetic.render import render_person

__all__ = ["ANNOTATION_FILE", "ATTRIBUTE_KINDS", "COLOURS", "HAIR_COLOURS", "Identity", "describe",
           "generate_dataset", "render_person", "sample_identity", "sample_mentions", "split_layout"]
