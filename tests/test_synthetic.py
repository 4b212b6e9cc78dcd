"""The synthetic dataset: determinism, the CUHK-PEDES format read back by the real reader, identity-disjoint
splits, captions that agree with the drawn attributes, consistent bag sides, and atomic writes."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.registry import load_records
from datasets.synthetic import (
    ATTRIBUTE_KINDS,
    COLOURS,
    HAIR_COLOURS,
    Identity,
    describe,
    generate_dataset,
    render_person,
    sample_identity,
    split_sizes,
)
from datasets.synthetic import generate as generate_module
from datasets.synthetic.identity import sample_identities

NUM_IDS, IMAGES_PER_ID = 12, 3
COLOUR_WORDS = set(COLOURS) | set(HAIR_COLOURS)
# Head nouns of each attribute kind, written independently of the generator's vocabulary tables.
KIND_NOUNS = {
    "person": {"man", "guy", "gentleman", "male", "woman", "lady", "girl", "female"},
    "hair": {"hair"}, "hat": {"cap", "beanie", "hat"},
    "upper": {"t-shirt", "tee", "shirt", "jacket", "hoodie", "sweatshirt", "sweater", "jumper", "coat"},
    "lower": {"trousers", "pants", "shorts", "skirt"}, "shoes": {"shoes", "sneakers"},
    "bag": {"backpack", "rucksack", "handbag", "purse", "bag"},
}
BUILD_WORDS = {"slim", "thin", "slender", "medium-build", "heavy-set", "stocky", "chubby"}
MALE_WORDS, FEMALE_WORDS = {"he", "his", "man", "guy", "gentleman", "male"}, {"she", "her", "woman", "lady", "girl",
                                                                              "female"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return generate_dataset(root / "synthetic-pedes", NUM_IDS, seed=3, images_per_id=IMAGES_PER_ID)


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z-]+", caption.lower())


def test_same_seed_same_bytes_other_seed_different(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", NUM_IDS, seed=3, images_per_id=IMAGES_PER_ID)
    other = generate_dataset(tmp_path / "other", NUM_IDS, seed=4, images_per_id=IMAGES_PER_ID)
    assert (again / "reid_raw.json").read_bytes() == (dataset / "reid_raw.json").read_bytes()
    images = sorted(p.relative_to(dataset) for p in (dataset / "imgs").rglob("*.jpg"))
    assert len(images) == NUM_IDS * IMAGES_PER_ID
    assert all((again / p).read_bytes() == (dataset / p).read_bytes() for p in images)
    assert (other / "reid_raw.json").read_bytes() != (dataset / "reid_raw.json").read_bytes()
    assert sum(np.array_equal(np.asarray(Image.open(other / p)), np.asarray(Image.open(dataset / p)))
               for p in images) == 0


def test_split_sizes_by_hand():
    assert split_sizes(10, (0.7, 0.1, 0.2)) == (7, 1, 2)
    assert split_sizes(3, (0.7, 0.1, 0.2)) == (1, 1, 1)
    assert split_sizes(500, (0.7, 0.1, 0.2)) == (350, 50, 100)
    assert split_sizes(4, (1.0, 0.0, 0.0)) == (4, 0, 0)
    for bad in [(2, (0.7, 0.1, 0.2)), (10, (0.5, 0.1, 0.2)), (10, (1.1, -0.1, 0.0))]:
        with pytest.raises(ValueError):
            split_sizes(*bad)


def test_reads_back_as_cuhk_pedes_with_identity_disjoint_splits(dataset):
    records = read_cuhk_pedes(dataset)
    assert load_records("synthetic", dataset.parent) == records
    assert len(records) == NUM_IDS * IMAGES_PER_ID
    assert sorted({r.person_id for r in records}) == list(range(1, NUM_IDS + 1))
    ids = {split: {r.person_id for r in records if r.split == split} for split in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == list(split_sizes(NUM_IDS, (0.7, 0.1, 0.2)))
    assert max(ids["train"]) < min(ids["val"]) and max(ids["val"]) < min(ids["test"])
    assert all(len(r.captions) == 2 and r.captions[0] != r.captions[1] for r in records)
    assert Image.open(records[0].image_path).size == (64, 128)
    raw = json.loads((dataset / "reid_raw.json").read_text())
    assert set(raw[0]) == {"split", "captions", "file_path", "processed_tokens", "id", "attributes", "mentions"}
    assert raw[0]["processed_tokens"][0] == words(raw[0]["captions"][0])


def test_captions_agree_with_attributes_and_cover_every_kind(dataset):
    mentioned = set()
    for record in json.loads((dataset / "reid_raw.json").read_text()):
        person = Identity(**record["attributes"])
        for caption in record["captions"]:
            tokens = words(caption)
            for i, token in enumerate(tokens):
                kind = next((k for k, nouns in KIND_NOUNS.items() if token in nouns), None)
                if kind is None:
                    continue
                mentioned.add(kind)
                before = [t for t in tokens[max(0, i - 3):i] if t in COLOUR_WORDS]
                if kind != "person" and before:
                    assert before[-1] == person.colour_of(kind), (caption, token, person)
            if BUILD_WORDS & set(tokens):
                mentioned.add("build")
            assert not (FEMALE_WORDS if person.gender == "man" else MALE_WORDS) & set(tokens), caption
            for side in ("left", "right"):
                if side in tokens:
                    assert person.bag_side == side, caption
            assert len(tokens) <= 72
    assert mentioned == set(ATTRIBUTE_KINDS) | {"build"}


def test_describe_mentions_exactly_the_requested_kinds():
    person = Identity("woman", "slim", 0, "blonde", "long", None, None, "coat", "red", "striped", "skirt",
                      "blue", "black", None, None, None)
    caption = describe(person, np.random.default_rng(0), kinds=("hair", "hat", "bag"))
    tokens = set(words(caption))
    assert "blonde" in tokens and "hair" in tokens and "hat" in tokens and "bag" in tokens
    assert not tokens & (KIND_NOUNS["upper"] | KIND_NOUNS["lower"] | KIND_NOUNS["shoes"] | BUILD_WORDS)
    assert not {"red", "blue", "black"} & tokens
    with pytest.raises(ValueError, match="unknown attribute kinds"):
        describe(person, np.random.default_rng(0), kinds=("tattoo",))


def test_identities_are_distinct_but_share_attributes():
    identities = sample_identities(np.random.default_rng(0), 300)
    assert len({p.described_key() for p in identities}) == 300
    upper_colours = [p.upper_colour for p in identities]
    assert len(set(upper_colours)) == len(COLOURS) and max(map(upper_colours.count, COLOURS)) < 60


def test_bag_is_drawn_on_the_side_the_caption_names():
    base = sample_identity(np.random.default_rng(1))
    person = Identity(**{**vars(base), "bag": "handbag", "bag_colour": "yellow", "bag_side": "left",
                         "upper_colour": "black", "lower_colour": "black", "lower": "trousers"})
    on_left = np.asarray(render_person(person, np.random.default_rng(5)), dtype=np.float32)
    on_right = np.asarray(render_person(person.mirrored(), np.random.default_rng(5)), dtype=np.float32)
    yellow = np.array(COLOURS["yellow"], dtype=np.float32)
    changed = np.abs(on_left - on_right).sum(-1) > 60  # (H, W): where the two bags are
    closer_in_left = (np.abs(on_left - yellow).sum(-1) < np.abs(on_right - yellow).sum(-1)) & changed
    columns = np.nonzero(closer_in_left)[1]
    assert columns.size > 20
    assert columns.mean() > on_left.shape[1] / 2  # the person's left is the image's right


def test_generation_is_atomic_and_refuses_to_clobber(tmp_path, monkeypatch):
    target = tmp_path / "synthetic-pedes"
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("interrupted")
        return render_person(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_person", failing_render)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_dataset(target, 5, seed=0, images_per_id=2)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    generate_dataset(target, 5, seed=0, images_per_id=2)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(target, 5, seed=1, images_per_id=2)
    generate_dataset(target, 5, seed=1, images_per_id=2, overwrite=True)
    assert json.loads((target / "generator.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-pedes"]


def test_generation_renders_each_image_once_at_the_requested_size(tmp_path, monkeypatch):
    sizes = []

    def counting_render(identity, rng, size):
        sizes.append(size)
        return render_person(identity, rng, size)

    monkeypatch.setattr(generate_module, "render_person", counting_render)
    folder = generate_dataset(tmp_path / "small", 25, seed=0, images_per_id=4, image_size=(96, 48))
    assert sizes == [(96, 48)] * 100  # one render per listed image, no retries or throw-away renders
    records = json.loads((folder / "reid_raw.json").read_text())
    listed = sorted(r["file_path"] for r in records)
    assert listed == sorted(str(p.relative_to(folder / "imgs")) for p in (folder / "imgs").rglob("*.jpg"))
    assert len(listed) == 100
    assert {Image.open(folder / "imgs" / path).size for path in listed} == {(48, 96)}  # (W, H)


def test_extra_train_identities_leave_val_and_test_byte_for_byte(dataset, tmp_path):
    """Extra identities are drawn after the split ones and go to train only: val and test keep every record
    and every image byte, and the extra people are new, distinct and labelled from NUM_IDS + 1."""
    grown = generate_dataset(tmp_path / "grown", NUM_IDS, seed=3, images_per_id=IMAGES_PER_ID, extra_train_ids=5)
    before = json.loads((dataset / "reid_raw.json").read_text())
    after = json.loads((grown / "reid_raw.json").read_text())
    assert after[:len(before)] == before
    extra = after[len(before):]
    assert len(extra) == 5 * IMAGES_PER_ID and {r["split"] for r in extra} == {"train"}
    assert sorted({r["id"] for r in extra}) == list(range(NUM_IDS + 1, NUM_IDS + 6))
    for record in before:
        if record["split"] != "train":
            path = record["file_path"]
            assert (grown / "imgs" / path).read_bytes() == (dataset / "imgs" / path).read_bytes(), path
    described = {Identity(**r["attributes"]).described_key() for r in after if r["file_path"].endswith("_s00.jpg")}
    assert len(described) == NUM_IDS + 5  # mirroring keeps what a caption describes apart from the bag side
    assert json.loads((grown / "generator.json").read_text())["extra_train_ids"] == 5
