"""Image transforms: shapes for a rectangular size, CLIP normalisation by hand, and the train-time randomness."""
import pickle

import pytest
import torch
from PIL import Image

from datasets.transforms import CLIP_MEAN, CLIP_STD, build_image_transform


def half_and_half(size=(40, 20)) -> Image.Image:
    """Left half red, right half blue (size is width, height)."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def test_clip_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("train", [True, False])
def test_output_shape_is_channels_height_width(train):
    transform = build_image_transform((48, 16), train=train)
    output = transform(Image.new("RGB", (37, 50), (10, 200, 30)))
    assert output.shape == (3, 48, 16) and output.dtype == torch.float32


def test_eval_normalises_a_constant_image_with_clip_statistics():
    transform = build_image_transform((32, 16), train=False)
    image = Image.new("RGB", (20, 50), (255, 0, 51))
    output = transform(image)
    expected = torch.tensor([(1.0 - 0.48145466) / 0.26862954,  # 1.930337...
                             (0.0 - 0.4578275) / 0.26130258,  # -1.752098...
                             (0.2 - 0.40821073) / 0.27577711])  # -0.754996...
    assert torch.allclose(output, expected[:, None, None].expand(3, 32, 16), atol=1e-5)
    assert output[0, 0, 0].item() == pytest.approx(1.9303, abs=1e-4)
    assert torch.equal(transform(image), output)


def test_train_flip_mirrors_and_padding_crop_only_adds_padding_values():
    image = half_and_half()
    upright = build_image_transform((20, 40), train=False)(image)  # same size: resize is a no-op
    flip_only = build_image_transform((20, 40), train=True, flip=True, pad=0, erasing=0.0)
    torch.manual_seed(0)
    outputs = [flip_only(image) for _ in range(20)]
    mirrored = [torch.equal(o, upright.flip(-1)) for o in outputs]
    unchanged = [torch.equal(o, upright) for o in outputs]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)

    padded = build_image_transform((20, 40), train=True, flip=False, pad=6, erasing=0.0)(image)
    zero_padding = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))[:, None]  # black pixels
    values = torch.cat([upright.reshape(3, -1), zero_padding], dim=1)
    for channel in range(3):
        assert set(padded[channel].unique().tolist()) <= set(values[channel].unique().tolist())


def test_grey_image_becomes_three_channels_and_transform_pickles():
    transform = pickle.loads(pickle.dumps(build_image_transform((16, 8), train=True)))
    assert transform(Image.new("L", (8, 16), 128)).shape == (3, 16, 8)


@pytest.mark.parametrize("kwargs", [{"image_size": (0, 8)}, {"pad": -1}, {"erasing": 1.5}])
def test_invalid_arguments_are_rejected(kwargs):
    arguments = {"image_size": (16, 8), "train": True} | kwargs
    with pytest.raises(ValueError):
        build_image_transform(**arguments)
