"""The authors' recipe around the network: transforms, schedule, captions, batch arithmetic, config checks."""
import dataclasses
import math
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.person_search import TrainPairs
from datasets.records import PersonRecord
from datasets.sampler import TrainSampler
from datasets.tokenization import build_tokenizer
from datasets.transforms import CLIP_MEAN, CLIP_STD, build_image_transform
from engine.builders import micro_batch_size
from utils.config import Config, ConfigError, load_config
from utils.schedule import lr_factor


def gradient_image(width=40, height=30) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([((7 * x) % 256, (11 * y) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image


def normalised(pil_image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(pil_image, dtype=np.float32)).permute(2, 0, 1) / 255  # (3, H, W)
    return (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


@pytest.mark.parametrize("mode, pil_mode", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_resize_interpolation_matches_pil(mode, pil_mode):
    image = gradient_image()
    out = build_image_transform((16, 8), train=False, resize=mode)(image)
    expected = normalised(image.resize((8, 16), pil_mode))
    assert torch.allclose(out, expected, atol=1e-5)


def test_default_config_resizes_bilinearly():
    assert Config().data.resize == "bilinear"


@pytest.mark.parametrize("fill, value", [("mean", CLIP_MEAN), ("zero", (0.0, 0.0, 0.0))])
def test_random_erasing_fill_value(fill, value):
    image = Image.new("RGB", (32, 64), (255, 255, 255))  # white: normalised values far from the fill
    transform = build_image_transform((64, 32), train=True, flip=False, pad=0, erasing=1.0, erasing_fill=fill)
    torch.manual_seed(0)
    out = transform(image)
    white = normalised(image)
    erased = (out != white).any(dim=0)  # (H, W)
    assert 0.02 <= erased.float().mean() <= 0.4  # the erased box covers 2-40 % of the image
    for channel in range(3):
        assert torch.all(out[channel][erased] == torch.tensor(value[channel], dtype=torch.float32))


def test_cosine_per_epoch_values():
    epochs, steps_per_epoch, lr = 30, 5, 1e-5
    for epoch in (0, 1, 7, 15, 29):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            expected = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            assert lr_factor(step, steps_per_epoch, epochs) == pytest.approx(expected, abs=1e-15)
    # through torch's scheduler, as the trainer uses it: the lr is constant inside an epoch
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, epochs))
    seen = []
    for _ in range(3 * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:5] == [lr] * 5
    assert seen[5:10] == [pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 30)))] * 5
    assert lr_factor(0, 5, 30, warmup_steps=4) == pytest.approx(0.25)  # warm-up scales the epoch value
    assert lr_factor(149, 5, 30, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


def make_records(tmp_path, captions_per_image=3, images=2):
    records = []
    for i in range(images):
        path = tmp_path / f"img{i}.png"
        gradient_image().save(path)
        captions = tuple(f"a person in a red coat number {i} {c}" for c in range(captions_per_image))
        records.append(PersonRecord(path, person_id=i, captions=captions, split="train"))
    return records


@pytest.mark.parametrize("protocol, expected", [("first_two", 2), ("all", 3)])
def test_training_captions_protocol(tmp_path, protocol, expected):
    records = make_records(tmp_path)
    pairs = TrainPairs(records, build_image_transform((16, 8), train=False), build_tokenizer(), 16, captions=protocol)
    assert len(pairs) == 2 * expected
    assert pairs.captions[:expected] == list(records[0].captions[:expected])
    assert pairs.labels.tolist() == [0] * expected + [1] * expected


def test_ara_masking_is_independent_of_the_augmentation(tmp_path):
    """Whether a word is masked must not follow whether the image was flipped (they once shared a seed)."""
    records = make_records(tmp_path, captions_per_image=1, images=1)
    transform = build_image_transform((16, 8), train=True, flip=True, pad=0, erasing=0.0)

    def first_word_only(captions):
        groups = torch.full((len(captions), 16), -1, dtype=torch.long)
        groups[:, 1] = 0  # the first word is the only candidate
        return groups
    pairs = TrainPairs(records, transform, build_tokenizer(), 16, captions="all",
                       candidate_groups=first_word_only, mask_prob=0.5)
    unflipped = build_image_transform((16, 8), train=False)(Image.open(records[0].image_path))
    counts = torch.zeros(2, 2)  # [flipped, masked]
    for seed in range(400):
        sample = pairs[(0, seed)]
        flipped = not torch.equal(sample["image"], unflipped)
        masked = bool((sample["ara_labels"] != -100).any())
        counts[int(flipped), int(masked)] += 1
    mask_rate_given_flip = counts[1, 1] / counts[1].sum()
    mask_rate_given_no_flip = counts[0, 1] / counts[0].sum()
    assert counts[1].sum() > 150 and counts[0].sum() > 150
    assert abs(mask_rate_given_flip - 0.5) < 0.1 and abs(mask_rate_given_no_flip - 0.5) < 0.1


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_an_epoch_holds_whole_accumulation_steps(accumulate):
    labels = torch.arange(40) // 2  # 20 people, 2 items each
    sampler = TrainSampler(labels, global_batch_size=4, seed=0, accumulate_steps=accumulate)
    assert sampler.batches_per_epoch == 10 - 10 % accumulate  # 10 full batches, whole groups kept
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == sampler.batches_per_epoch * 4
    resumed = TrainSampler(labels, global_batch_size=4, seed=0, accumulate_steps=accumulate)
    resumed.set_epoch(1, start_batch=accumulate)  # resume after the first optimisation step
    assert list(resumed) == list(sampler)[accumulate * 4:]


@pytest.mark.parametrize("world, micro", [(1, 120), (4, 30), (5, 24), (8, 15)])
def test_global_batch_splits_over_processes(world, micro):
    assert micro_batch_size(load_config("configs/cuhk_pedes.yaml"), world) == micro


def test_global_batch_errors_and_accumulation_warning(caplog):
    icfg = load_config("configs/icfg_pedes.yaml")
    assert [micro_batch_size(icfg, w) for w in (1, 4, 8)] == [96, 24, 12]
    with pytest.raises(ConfigError, match="96 does not split over 5 process"):
        micro_batch_size(icfg, 5)
    accumulated = load_config("configs/cuhk_pedes.yaml", ["train.accumulate_steps=2"])
    with caplog.at_level("WARNING"):
        assert micro_batch_size(accumulated, 4) == 15
    assert "see 60 pairs per forward pass, not the global batch of 120" in caplog.text


def literal_fields(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        key = prefix + f.metadata.get("key", f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from literal_fields(hint, key + ".")
        elif typing.get_origin(hint) is typing.Literal:
            yield key, typing.get_args(hint)


def test_every_enumeration_is_checked_at_load(tmp_path):
    fields = dict(literal_fields())
    for key in ("train.select_metric", "eval.image_tokens_dtype", "eval.visualize_mode", "train.amp",
                "loss.itm.negatives", "loss.atp.mode", "data.dataset", "optim.schedule", "eval.split"):
        assert key in fields, key
    empty = tmp_path / "c.yaml"
    empty.write_text("")
    for key, allowed in fields.items():
        with pytest.raises(ConfigError) as error:
            load_config(empty, [f"{key}=not_a_choice"])
        message = str(error.value)
        assert key in message and "not_a_choice" in message and all(str(a) in message for a in allowed), message


@pytest.mark.parametrize("override, key", [
    ("train.device=gpu", "train.device"), ("data.global_batch_size=0", "data.global_batch_size"),
    ("train.accumulate_steps=0", "train.accumulate_steps"), ("train.log_every=0", "train.log_every"),
    ("train.eval_every=0", "train.eval_every"), ("eval.k_test=0", "eval.k_test"), ("train.epochs=0", "train.epochs"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.lr=0", "optim.lr"), ("loss.ara.prob=1.5", "loss.ara.prob"),
    ("train.select_metric=R2", "train.select_metric"), ("data.erasing=-0.1", "data.erasing"),
])
def test_impossible_values_are_refused_at_load(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/synthetic.yaml", [override])


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: [1, 2\n", "line"),
    ("train:\n\tepochs: 3\n", "tab"),
    ("train:\n  epochs: 3\n  epochs: 4\n", "line"),
])
def test_yaml_errors_name_the_file(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_configs_hold_only_what_differs_from_what_they_inherit():
    from pathlib import Path

    from utils.config import _read_yaml, config_to_dict

    def repeated(values: dict, inherited: dict, prefix: str):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from repeated(value, inherited[key], f"{prefix}{key}.")
            elif value == inherited[key]:
                yield f"{prefix}{key}"
    for path in sorted(Path("configs").rglob("*.yaml")):
        raw = _read_yaml(path)
        base = raw.pop("_base_", None)
        inherited = config_to_dict(load_config(path.parent / base) if base else Config())
        assert not list(repeated(raw, inherited, "")), f"{path} repeats inherited values"
