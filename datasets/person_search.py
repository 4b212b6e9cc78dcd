"""From person records to what the model consumes: training pairs, a gallery and text queries."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.ara_masking import mask_attribute_tokens
from datasets.images import load_rgb
from datasets.records import PersonRecord
from datasets.tokenization import encode

log = logging.getLogger(__name__)

CAPTION_PROTOCOLS = {"all": None, "first_two": 2}  # captions used per image: all, or the first two
ImageLoader = Callable[[Path, int], Image.Image]  # (image path, sample seed) -> the training photo


def split_records(records: Sequence[PersonRecord], val_from_train: float = 0.0,
                  seed: int = 0) -> dict[str, list[PersonRecord]]:
    """Groups records by split; optionally moves a fixed, seeded fraction of training identities to val.

    Carving is only allowed when the annotation has no val split (ICFG-PEDES), so val never mixes sources.
    """
    splits: dict[str, list[PersonRecord]] = {"train": [], "val": [], "test": []}
    for record in records:
        splits[record.split].append(record)
    if val_from_train > 0:
        if splits["val"]:
            raise ValueError("data.val_from_train > 0 but the annotation already has a val split")
        people = sorted({r.person_id for r in splits["train"]})
        order = torch.randperm(len(people), generator=torch.Generator().manual_seed(seed)).tolist()
        held_out = {people[i] for i in order[:max(1, round(val_from_train * len(people)))]}
        splits["val"] = [r for r in splits["train"] if r.person_id in held_out]
        splits["train"] = [r for r in splits["train"] if r.person_id not in held_out]
        log.info("val carved from train: %d identities (%.1f%%, seed %d)", len(held_out), 100 * val_from_train, seed)
    return splits


def stream_seeds(sample_seed: int, streams: int) -> list[int]:
    """Independent seeds for a sample's random streams (augmentation, ARA masking), from one seed.

    Seeding two generators with the same number would tie their draws together (e.g. a word masked exactly
    when the image is flipped); drawing the seeds from a generator seeded once keeps them apart.
    """
    generator = torch.Generator().manual_seed(sample_seed)
    return torch.randint(2**62, (streams,), generator=generator).tolist()


def read_photo(path: Path, sample_seed: int) -> Image.Image:
    """The training photo of most datasets: the image file itself, the same for every sample seed."""
    return load_rgb(path)


class TrainPairs(Dataset):
    """One item per (image, caption), with captions tokenized and ARA candidates found once, up front.

    Items are requested as ``(index, sample_seed)`` (see ``datasets.sampler``); the seed drives the
    augmentation and, independently, the ARA masking of that item.

    Args:
        transform: PIL image → (3, H, W) tensor.
        captions: ``"first_two"`` (reference: the first two captions of each image) or ``"all"``.
        candidate_groups: optional function ``captions -> (N, L) long tensor`` of ARA group ids per caption
            (-1 = not a candidate); with it every item also carries ``ara_input_ids`` and ``ara_labels``.
        mask_prob: ARA masking probability of each candidate group.
        load_image: ``(image_path, sample_seed) -> PIL image``, how the dataset makes a training photo
            (``datasets.registry.training_image_loader``); by default the file itself.
    """

    def __init__(self, records: Sequence[PersonRecord], transform: Callable, tokenizer, max_len: int,
                 captions: str = "first_two", candidate_groups: Callable | None = None, mask_prob: float = 0.0,
                 load_image: ImageLoader = read_photo):
        if captions not in CAPTION_PROTOCOLS:
            raise ValueError(f"captions must be one of {list(CAPTION_PROTOCOLS)}, got {captions!r}")
        keep = CAPTION_PROTOCOLS[captions]
        self.image_paths = [r.image_path for r in records for _ in r.captions[:keep]]
        self.captions = [c for r in records for c in r.captions[:keep]]
        people = sorted({r.person_id for r in records})
        label_of = {pid: i for i, pid in enumerate(people)}
        self.labels = torch.tensor([label_of[r.person_id] for r in records for _ in r.captions[:keep]])
        self.num_people = len(people)
        self.transform = transform
        self.input_ids, self.attention_mask = encode(tokenizer, self.captions, max_len)
        self.candidate_groups = None if candidate_groups is None else candidate_groups(self.captions)
        self.mask_prob = mask_prob
        self.load_image = load_image

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample_seed = item
        image_seed, mask_seed = stream_seeds(sample_seed, 2)
        image = self.load_image(self.image_paths[index], sample_seed)
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG: seed a private copy
            torch.default_generator.manual_seed(image_seed)  # CPU only: torch.manual_seed also queues a CUDA seed
            image = self.transform(image)
        sample = {"image": image, "input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                  "label": self.labels[index]}
        if self.candidate_groups is not None:
            masked, labels = mask_attribute_tokens(self.input_ids[index:index + 1],
                                                   self.candidate_groups[index:index + 1], self.mask_prob,
                                                   generator=torch.Generator().manual_seed(mask_seed))
            sample["ara_input_ids"], sample["ara_labels"] = masked[0], labels[0]
        return sample


@dataclass
class RetrievalSet:
    """A gallery of images and a list of text queries, each with person ids."""

    gallery_paths: list
    gallery_pids: torch.Tensor  # (G,)
    query_texts: list[str]
    query_pids: torch.Tensor  # (Q,)
    query_gallery_index: torch.Tensor  # (Q,) the gallery image each caption describes

    @classmethod
    def from_records(cls, records: Sequence[PersonRecord], captions: str = "all") -> RetrievalSet:
        """Every image is in the gallery; its captions (all, or the first two) are queries."""
        if captions not in CAPTION_PROTOCOLS:
            raise ValueError(f"eval captions protocol must be one of {list(CAPTION_PROTOCOLS)}, got {captions!r}")
        if not records:
            raise ValueError("no records for this split: nothing to evaluate")
        keep = CAPTION_PROTOCOLS[captions]
        texts, pids, owner = [], [], []
        for i, record in enumerate(records):
            for caption in record.captions[:keep]:
                texts.append(caption)
                pids.append(record.person_id)
                owner.append(i)
        return cls([r.image_path for r in records], torch.tensor([r.person_id for r in records]), texts,
                   torch.tensor(pids), torch.tensor(owner))


class GalleryImages(Dataset):
    """Gallery images in order, for batched encoding."""

    def __init__(self, paths: Sequence, transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[index]))
