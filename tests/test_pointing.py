"""The pointing game on hand examples, the part-region annotation (run lengths, parsing, errors) and the synthetic
generator's region bookkeeping: regions lie where the part's colour is, and recording them changes no pixel."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.records import DatasetFormatError
from datasets.regions import decode_mask, encode_mask, parse_regions
from datasets.synthetic.captions import word_parts
from datasets.synthetic.generate import generate_dataset
from datasets.synthetic.identity import COLOURS, sample_identities
from datasets.synthetic.render import render_person, render_person_with_regions
from engine.pointing import PointingTally, peak


def test_peak_takes_the_first_maximum_and_none_for_an_empty_map():
    assert peak(torch.tensor([[0.0, 2.0], [2.0, 1.0]])) == (0, 1)
    assert peak(torch.zeros(3, 3)) is None


def test_pointing_arithmetic_on_a_hand_example():
    region_a = np.zeros((2, 4), dtype=bool)
    region_a[0, :2] = True  # 2 of 8 pixels
    region_b = np.zeros((2, 4), dtype=bool)
    region_b[1, :] = True  # 4 of 8
    tally = PointingTally()
    assert tally.add("upper", torch.tensor([[0.0, 3.0, 0, 0], [0, 0, 0, 0]]), region_a) is True
    assert tally.add("upper", torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 5.0]]), region_a) is False
    assert tally.add("lower", torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 5.0]]), region_b) is True
    assert tally.add("lower", torch.zeros(2, 4), region_b) is False  # points nowhere: a miss
    assert tally.add("hat", torch.ones(2, 4), np.zeros((2, 4), dtype=bool)) is None  # no region: not counted
    summary = tally.summary()
    assert summary["words"] == 4 and summary["hit_rate"] == 50.0
    assert summary["baseline"] == pytest.approx(100 * (0.25 + 0.25 + 0.5 + 0.5) / 4)
    assert summary["parts"] == {"lower": {"hit_rate": 50.0, "words": 2, "baseline": 50.0},
                                "upper": {"hit_rate": 50.0, "words": 2, "baseline": 25.0}}
    with pytest.raises(ValueError, match="differ in size"):
        tally.add("upper", torch.zeros(3, 4), region_a)


@pytest.mark.parametrize("first_inside", [False, True])
def test_run_lengths_round_trip(first_inside):
    mask = np.random.default_rng(0).random((7, 5)) < 0.3
    mask[0, 0] = first_inside
    runs = encode_mask(mask)
    assert runs.split()[0] == ("0" if first_inside else runs.split()[0])
    assert sum(map(int, runs.split())) == 35
    assert (decode_mask(runs, (7, 5)) == mask).all()


def test_regions_field_is_checked():
    captions = ("a red coat", "black shoes")
    good = {"size": [1, 4], "parts": {"upper": "1 2 1"}, "words": [[None, "upper", "upper"], ["shoes", "shoes"]]}
    regions = parse_regions(good, captions)
    assert regions.mask("upper").tolist() == [[False, True, True, False]]
    assert not regions.mask("hat").any()
    assert regions.caption_words["black shoes"] == ("shoes", "shoes")
    for bad, message in [({**good, "parts": {"upper": "1 2"}}, "sum to 1x4=4"),
                         ({**good, "parts": {"scarf": "4"}}, "part names"),
                         ({**good, "words": [[None]]}, "one list per caption"),
                         ({**good, "words": [[None, "coat", None], ["shoes", "shoes"]]}, "must list 3 entries"),
                         ({"size": [1, 4]}, "keys size, parts, words")]:
        with pytest.raises(ValueError, match=message):
            parse_regions(bad, captions)


def test_a_bad_regions_field_names_the_file_and_record(tmp_path):
    (tmp_path / "imgs").mkdir()
    record = {"id": 1, "file_path": "a.jpg", "captions": ["a man"], "split": "test",
              "regions": {"size": [2, 2], "parts": {"hat": "5"}, "words": [[None, None]]}}
    (tmp_path / "reid_raw.json").write_text(json.dumps([record]))
    with pytest.raises(DatasetFormatError, match=r"reid_raw.json: record 0: 'regions': part 'hat'"):
        read_cuhk_pedes(tmp_path, check_images=False)


def test_recording_regions_changes_no_pixel_and_no_random_number():
    for index, person in enumerate(sample_identities(np.random.default_rng(1), 12)):
        plain_rng, region_rng = np.random.default_rng(index), np.random.default_rng(index)
        image, regions = render_person_with_regions(person, region_rng)
        assert render_person(person, plain_rng).tobytes() == image.tobytes()
        assert plain_rng.random() == region_rng.random()
        assert {"upper", "lower", "shoes", "hair"} <= set(regions)
        assert ("bag" in regions) == (person.bag is not None) and ("hat" in regions) <= (person.hat is not None)


@pytest.mark.parametrize("part", ["upper", "lower", "shoes", "bag"])
def test_a_region_is_where_its_colour_is(part):
    """Recolouring one part changes the pixels inside its region and (up to edges and relighting) none outside."""
    people = [p for p in sample_identities(np.random.default_rng(2), 60) if getattr(p, f"{part}_colour") is not None]
    for index, person in enumerate(people[:6]):
        colour = getattr(person, f"{part}_colour")
        other = "white" if sum(COLOURS[colour]) < 3 * 128 else "black"
        recoloured = dataclasses.replace(person, **{f"{part}_colour": other})
        image, regions = render_person_with_regions(person, np.random.default_rng(index))
        changed = render_person(recoloured, np.random.default_rng(index))
        difference = np.abs(np.asarray(image, float) - np.asarray(changed, float)).max(axis=2)  # (H, W)
        region = regions[part]
        assert (difference[region] > 40).mean() > 0.9, (part, person)
        assert (difference[~region] > 40).mean() < 0.02, (part, person)


def test_caption_words_name_their_parts():
    person = sample_identities(np.random.default_rng(5), 1)[0]
    person = dataclasses.replace(person, upper="t-shirt", upper_colour="red", upper_pattern="striped",
                                 lower="shorts", lower_colour="red", shoes_colour="black", hat=None,
                                 hat_colour=None, bag="backpack", bag_colour="black", hair_colour="brown",
                                 hair_length="long")
    words = "a man with long brown hair wears a striped red tee, red shorts and black shoes he wears no hat " \
            "he carries a black backpack on his back".split(" ")
    parts = word_parts(person, words)
    named = {(w, p) for w, p in zip(words, parts) if p}
    assert named == {("long", "hair"), ("brown", "hair"), ("hair", "hair"), ("striped", "upper"), ("red", "upper"),
                     ("tee,", "upper"), ("red", "lower"), ("shorts", "lower"), ("black", "shoes"),
                     ("shoes", "shoes"), ("black", "bag"), ("backpack", "bag")}
    assert parts[words.index("hat")] is None and parts[-1] is None  # "no hat", "on his back"


def test_generated_records_carry_regions(tmp_path):
    folder = generate_dataset(tmp_path / "set", 2, 1, 1, seed=3, images_per_id=2)
    records = read_cuhk_pedes(folder)
    raw = json.loads((folder / "reid_raw.json").read_text())
    assert len(records) == 8 and all(r.regions is not None and r.regions.size == (128, 64) for r in records)
    for record, entry in zip(records, raw):
        for caption in record.captions:
            assert len(record.regions.caption_words[caption]) == len(caption.split(" "))
        named = {part for words in record.regions.caption_words.values() for part in words if part}
        worn = {"upper", "lower", "shoes", "hair"} | {part for part in ("hat", "bag") if entry["attributes"][part]}
        assert named and named <= worn  # words name only parts the person has
