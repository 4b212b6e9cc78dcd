"""The synthetic dataset: determinism (and the bytes of the data every recipe was measured on), the CUHK-PEDES
format read back by the real reader, identity-disjoint splits, captions that agree with the drawn attributes,
consistent bag sides, atomic writes, and the folder generated on first use and checked against the config."""
import hashlib
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
    split_layout,
)
from datasets.synthetic import generate as generate_module
from datasets.synthetic.identity import sample_identities
from datasets.synthetic.render import render_person_with_regions
from utils.config import SyntheticConfig
from utils.errors import DataError

SPLIT_IDS, IMAGES_PER_ID = (9, 1, 2), 3  # train, val, test identities
NUM_IDS = sum(SPLIT_IDS)
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
    return generate_dataset(root / "synthetic-pedes", *SPLIT_IDS, seed=3, images_per_id=IMAGES_PER_ID)


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z-]+", caption.lower())


def test_same_seed_same_bytes_other_seed_different(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", *SPLIT_IDS, seed=3, images_per_id=IMAGES_PER_ID)
    other = generate_dataset(tmp_path / "other", *SPLIT_IDS, seed=4, images_per_id=IMAGES_PER_ID)
    assert (again / "reid_raw.json").read_bytes() == (dataset / "reid_raw.json").read_bytes()
    images = sorted(p.relative_to(dataset) for p in (dataset / "imgs").rglob("*.jpg"))
    assert len(images) == NUM_IDS * IMAGES_PER_ID
    assert all((again / p).read_bytes() == (dataset / p).read_bytes() for p in images)
    assert (other / "reid_raw.json").read_bytes() != (dataset / "reid_raw.json").read_bytes()
    assert sum(np.array_equal(np.asarray(Image.open(other / p)), np.asarray(Image.open(dataset / p)))
               for p in images) == 0


def test_split_layout_by_hand():
    assert split_layout(9, 1, 2) == ["train"] * 7 + ["val"] + ["test"] * 2 + ["train"] * 2  # 7 = 7/3 x (1 + 2)
    assert split_layout(2, 1, 1) == ["train", "train", "val", "test"]  # fewer than 7/3 x 2: all of train first
    assert split_layout(3, 0, 0) == ["train"] * 3
    demo = split_layout(1600, 60, 120)
    assert len(demo) == 1780 and demo.count("train") == 1600
    assert demo[:420] == ["train"] * 420 and demo[420:480] == ["val"] * 60 and demo[480:600] == ["test"] * 120
    with pytest.raises(ValueError, match="val_ids must be >= 0"):
        split_layout(3, -1, 1)


def test_the_demo_data_keep_their_bytes(tmp_path):
    """The layout the recipes were measured on: recorded from the generator that split 10 identities 70/10/20
    and appended 3 training identities (the demo: 600 split, 1,180 appended)."""
    folder = generate_dataset(tmp_path / "kept", 10, 1, 2, seed=0, images_per_id=4)
    records = json.loads((folder / "reid_raw.json").read_text())
    assert sorted({(r["id"], r["split"]) for r in records}) == [
        *((i, "train") for i in range(1, 8)), (8, "val"), (9, "test"), (10, "test"), (11, "train"), (12, "train"),
        (13, "train")]
    digest = hashlib.sha256()
    for path in sorted((folder / "imgs").rglob("*.jpg")):
        digest.update(path.read_bytes())
    assert digest.hexdigest() == "973179206444e4020f325379a7375be0633a8b1b04d70581ddadd31937a9930c"


def test_reads_back_as_cuhk_pedes_with_identity_disjoint_splits(dataset):
    records = read_cuhk_pedes(dataset)
    assert load_records("synthetic", dataset.parent) == records
    assert len(records) == NUM_IDS * IMAGES_PER_ID
    assert sorted({r.person_id for r in records}) == list(range(1, NUM_IDS + 1))
    ids = {split: {r.person_id for r in records if r.split == split} for split in ("train", "val", "test")}
    layout = split_layout(*SPLIT_IDS)
    assert ids == {split: {i + 1 for i, s in enumerate(layout) if s == split} for split in ("train", "val", "test")}
    assert all(len(r.captions) == 2 and r.captions[0] != r.captions[1] for r in records)
    assert Image.open(records[0].image_path).size == (64, 128)
    raw = json.loads((dataset / "reid_raw.json").read_text())
    assert set(raw[0]) >= {"split", "captions", "file_path", "processed_tokens", "id", "attributes", "mentions"}
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
        return render_person_with_regions(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_person_with_regions", failing_render)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_dataset(target, 3, 1, 1, seed=0, images_per_id=2)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    generate_dataset(target, 3, 1, 1, seed=0, images_per_id=2)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(target, 3, 1, 1, seed=1, images_per_id=2)
    generate_dataset(target, 3, 1, 1, seed=1, images_per_id=2, overwrite=True)
    assert json.loads((target / "generator.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-pedes"]


def test_generation_renders_each_image_once_at_the_requested_size(tmp_path, monkeypatch):
    sizes = []

    def counting_render(identity, rng, size):
        sizes.append(size)
        return render_person_with_regions(identity, rng, size)

    monkeypatch.setattr(generate_module, "render_person_with_regions", counting_render)
    folder = generate_dataset(tmp_path / "small", 18, 2, 5, seed=0, images_per_id=4, image_size=(96, 48))
    assert sizes == [(96, 48)] * 100  # one render per listed image, no retries or throw-away renders
    records = json.loads((folder / "reid_raw.json").read_text())
    listed = sorted(r["file_path"] for r in records)
    assert listed == sorted(str(p.relative_to(folder / "imgs")) for p in (folder / "imgs").rglob("*.jpg"))
    assert len(listed) == 100
    assert {Image.open(folder / "imgs" / path).size for path in listed} == {(48, 96)}  # (W, H)


def test_more_training_identities_leave_val_and_test_byte_for_byte(dataset, tmp_path):
    """Identities beyond the leading training block are drawn last and go to train only: val and test keep every
    record and every image byte, and the new people are distinct and labelled from NUM_IDS + 1."""
    grown = generate_dataset(tmp_path / "grown", SPLIT_IDS[0] + 5, *SPLIT_IDS[1:], seed=3,
                             images_per_id=IMAGES_PER_ID)
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
    assert json.loads((grown / "generator.json").read_text())["train_ids"] == SPLIT_IDS[0] + 5


def test_generated_on_first_use_then_refused_with_other_settings(tmp_path):
    settings = SyntheticConfig(train_ids=3, val_ids=1, test_ids=1, seed=2, images_per_id=2)
    records = load_records("synthetic", tmp_path, synthetic=settings)
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [6, 2, 2]
    assert load_records("synthetic", tmp_path, synthetic=settings) == records  # read again, not regenerated
    with pytest.raises(DataError) as error:
        load_records("synthetic", tmp_path, synthetic=SyntheticConfig(train_ids=4, val_ids=1, test_ids=1, seed=3,
                                                                      images_per_id=2))
    message = str(error.value)
    assert "train_ids: folder has 3, config wants 4, seed: folder has 2, config wants 3" in message
    assert "\n" not in message and "delete the folder" in message
    assert load_records("synthetic", tmp_path) == records  # without settings the folder is read as it is


def test_a_folder_not_written_by_the_generator_is_refused(tmp_path):
    folder = generate_dataset(tmp_path / "synthetic-pedes", 2, 1, 1, seed=0, images_per_id=1)
    (folder / "generator.json").unlink()
    with pytest.raises(DataError, match="generator.json not found"):
        load_records("synthetic", tmp_path, synthetic=SyntheticConfig(train_ids=2, val_ids=1, test_ids=1,
                                                                      images_per_id=1))


def test_a_failed_generation_is_one_data_error_on_every_rank(tmp_path, monkeypatch):
    """Rank 0 generates while the others wait in a collective: a failure (here a full disk) must reach every rank
    as the same error instead of leaving them waiting (utils.dist.main_process_result)."""
    import datasets.synthetic.prepare as prepare

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "generate_dataset", full_disk)
    with pytest.raises(DataError, match=r"could not write the synthetic dataset to .*No space left on device"):
        prepare.ensure_generated(tmp_path / "synthetic-pedes", SyntheticConfig(train_ids=3, val_ids=1, test_ids=1))
