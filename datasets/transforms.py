"""Image transforms of the reference recipe: PIL image → normalised float tensor (3, H, W).

Train: to RGB → Resize → RandomHorizontalFlip → Pad → RandomCrop → ToTensor → Normalize → RandomErasing.
Eval:  to RGB → Resize → ToTensor → Normalize.
Normalisation uses CLIP's per-channel statistics: x ← (x − mean) / std with x in [0, 1]. The reference
resizes bilinearly and fills erased boxes with the CLIP mean values themselves, written into the already
normalised tensor (so the box is not black but ≈ (0.48, 0.46, 0.41) in normalised units).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from datasets.images import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ERASING_SCALE = (0.02, 0.4)
RESIZE_MODES = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
ERASING_FILLS = {"mean": CLIP_MEAN, "zero": 0}


def build_image_transform(image_size: tuple[int, int], train: bool, flip: bool = True, pad: int = 10,
                          erasing: float = 0.5, resize: str = "bilinear",
                          erasing_fill: str = "mean") -> Callable[[Image.Image], torch.Tensor]:
    """Builds the train or eval image transform: a picklable callable, PIL image (any mode) → float (3, H, W).

    Args:
        image_size: output ``(height, width)``; the image is resized to it (aspect ratio not kept).
        train: whether to add the random augmentations.
        flip: train only: random horizontal flip with p = 0.5.
        pad: train only: pixels of zero padding on each side before the random crop back to
            ``image_size``; 0 disables pad and crop.
        erasing: train only: probability of random erasing (scale 0.02–0.4 of the area); 0 disables it.
        resize: ``"bilinear"`` (reference) or ``"bicubic"`` interpolation of the resize.
        erasing_fill: ``"mean"`` (reference: the CLIP mean values) or ``"zero"`` for erased boxes.
    """
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (height, width), got {image_size}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if not 0.0 <= erasing <= 1.0:
        raise ValueError(f"erasing must be a probability in [0, 1], got {erasing}")
    if resize not in RESIZE_MODES or erasing_fill not in ERASING_FILLS:
        raise ValueError(f"resize must be one of {list(RESIZE_MODES)} and erasing_fill one of "
                         f"{list(ERASING_FILLS)}, got {resize!r} and {erasing_fill!r}")

    steps: list[Callable] = [T.Lambda(to_rgb), T.Resize((height, width), interpolation=RESIZE_MODES[resize])]
    if train and flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    if train and pad > 0:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    if train and erasing > 0:
        steps.append(T.RandomErasing(p=erasing, scale=ERASING_SCALE, value=ERASING_FILLS[erasing_fill]))
    return T.Compose(steps)
