"""Record validation on tiny hand-made records: empty splits, missing and corrupt images, captions that
say nothing (errors, or dropped with counts), long captions counted, images under two ids or in two splits."""
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.person_search import split_records
from datasets.records import PersonRecord
from datasets.tokenization import build_tokenizer, encode
from datasets.validation import validate_splits
from engine.builders import load_splits
from tests.helpers import tiny_config
from utils.config import load_config
from utils.errors import ConfigError, DataError

RUNIC = "ᚠᛇᚻ ᛒᛦᚦ"  # a script outside the BERT vocabulary: every word is [UNK]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def write_image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 64), colour).save(path)
    return path


def record(folder: Path, name: str, person_id: int, split: str, captions=("a man in a red coat",)) -> PersonRecord:
    return PersonRecord(write_image(folder / name), person_id, tuple(captions), split)


def clean_splits(folder: Path) -> dict[str, list[PersonRecord]]:
    return {"train": [record(folder, "a.jpg", 1, "train"), record(folder, "b.jpg", 2, "train")],
            "val": [record(folder, "c.jpg", 3, "val")],
            "test": [record(folder, "d.jpg", 4, "test", ("a woman with a bag", "she walks"))]}


def validate(splits, tokenizer, needed=("train", "test"), max_len=73, **options):
    return validate_splits(splits, needed, tokenizer, max_len, "DATASET", **options)


def test_clean_splits_pass_unchanged_and_leave_the_tokenizer_as_it_was(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    before = (tokenizer.truncation, tokenizer.padding)
    assert validate(splits, tokenizer) == splits
    assert (tokenizer.truncation, tokenizer.padding) == before


def test_long_captions_are_counted_in_the_log_not_failed(tmp_path, tokenizer, caplog):
    splits = clean_splits(tmp_path)
    # [CLS] + 6 tokens + [SEP] = 8 fits max_len 8; "a woman with a bag" (5) fits; 7 tokens do not
    splits["train"][0] = record(tmp_path, "a.jpg", 1, "train", ("one two three four five six seven",
                                                                  "one two three four five six"))
    with caplog.at_level(logging.INFO, logger="datasets.validation"):
        validate(splits, tokenizer, max_len=8)
    assert "1 of 6 captions of DATASET are longer than 8 tokens and will be cut" in caplog.text


def test_empty_needed_split_is_named(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    splits["val"] = []
    assert validate(splits, tokenizer, needed=("train", "test")) == splits  # val not needed: fine
    with pytest.raises(DataError, match=r"split 'val' of DATASET is empty, but the run needs it \(set "
                                        r"data.val_from_train"):
        validate(splits, tokenizer, needed=("train", "val"))


def test_missing_and_truncated_images_are_named(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    (tmp_path / "b.jpg").unlink()
    test_image = tmp_path / "d.jpg"
    test_image.write_bytes(test_image.read_bytes()[:100])  # cut inside the JPEG header
    with pytest.raises(DataError) as error:
        validate(splits, tokenizer)
    lines = str(error.value).splitlines()
    assert lines[0] == "2 of 4 images of DATASET are missing or unreadable; first 2:"
    assert lines[1] == f"  {tmp_path / 'b.jpg'}: missing"
    assert lines[2].startswith(f"  {test_image}: unreadable (")


def test_many_bad_images_name_five_and_count_all(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    splits["train"] += [PersonRecord(tmp_path / f"gone{i}.jpg", 10 + i, ("a man",), "train") for i in range(7)]
    (tmp_path / "c.jpg").write_text("not an image")
    with pytest.raises(DataError) as error:
        validate(splits, tokenizer)
    lines = str(error.value).splitlines()
    assert lines[0] == "8 of 11 images of DATASET are missing or unreadable; first 5:"
    assert lines[1:] == [f"  {tmp_path / f'gone{i}.jpg'}: missing" for i in range(5)]  # c.jpg (val) is 8th


def bad_caption_splits(folder: Path) -> dict[str, list[PersonRecord]]:
    splits = clean_splits(folder)
    splits["train"][0] = record(folder, "a.jpg", 1, "train", ("a man in a red coat", ""))
    splits["train"][1] = record(folder, "b.jpg", 2, "train", ("!!! ###", "?? ,, -- ///"))
    splits["test"][0] = record(folder, "d.jpg", 4, "test", ("a woman with a bag", RUNIC))
    return splits


def test_bad_captions_are_errors_naming_record_and_caption(tmp_path, tokenizer):
    with pytest.raises(DataError) as error:
        validate(bad_caption_splits(tmp_path), tokenizer)
    assert str(error.value).splitlines() == [
        "4 of 7 captions of DATASET are empty or only [UNK]/punctuation after tokenizing; first 4:",
        f"  train {tmp_path / 'a.jpg'} caption 1 '': empty",
        f"  train {tmp_path / 'b.jpg'} caption 0 '!!! ###': only [UNK]/punctuation",
        f"  train {tmp_path / 'b.jpg'} caption 1 '?? ,, -- ///': only [UNK]/punctuation",
        f"  test {tmp_path / 'd.jpg'} caption 1 '{RUNIC}': only [UNK]/punctuation",
        "  (set data.drop_bad_captions=true to drop them)"]


def test_drop_bad_captions_keeps_the_rest_and_logs_counts(tmp_path, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="datasets.validation"):
        kept = validate(bad_caption_splits(tmp_path), tokenizer, drop_bad_captions=True)
    assert "dropped 4 of 7 captions of DATASET that are empty or only [UNK]/punctuation, and 1 records left " \
           "with no caption" in caplog.text
    assert [(r.image_path.name, r.captions) for r in kept["train"]] == [("a.jpg", ("a man in a red coat",))]
    assert [(r.image_path.name, r.captions) for r in kept["test"]] == [("d.jpg", ("a woman with a bag",))]
    assert kept["val"] == clean_splits(tmp_path)["val"]


def test_dropping_that_empties_a_needed_split_is_an_error(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    splits["test"] = [record(tmp_path, "d.jpg", 4, "test", (RUNIC,))]
    with pytest.raises(DataError, match="split 'test' of DATASET is empty, but the run needs it"):
        validate(splits, tokenizer, drop_bad_captions=True)


def test_captions_cleaned_to_nothing_by_the_reader_are_found(tmp_path, tokenizer):
    folder = tmp_path / "CUHK-PEDES"
    raw = [{"id": 1, "file_path": "x.jpg", "captions": ["A man.", "!!! ###"], "split": "train"}]
    write_image(folder / "imgs" / "x.jpg")
    (folder / "reid_raw.json").write_text(json.dumps(raw), encoding="utf-8")
    splits = split_records(read_cuhk_pedes(folder))
    with pytest.raises(DataError, match=re.escape(f"train {folder.resolve() / 'imgs' / 'x.jpg'} caption 1 '': empty")):
        validate(splits, tokenizer, needed=("train",))


def test_image_under_two_ids_is_an_error_or_a_warning(tmp_path, tokenizer, caplog):
    splits = clean_splits(tmp_path)
    splits["train"].append(PersonRecord(tmp_path / "a.jpg", 7, ("a man",), "train"))
    with pytest.raises(DataError) as error:
        validate(splits, tokenizer)
    assert str(error.value).splitlines() == [
        "1 images of DATASET are listed under more than one person id; first 1:",
        f"  {tmp_path / 'a.jpg'}: ids 1, 7",
        "  (set data.duplicate_images=warn to go on anyway)"]
    with caplog.at_level(logging.WARNING, logger="datasets.validation"):
        assert validate(splits, tokenizer, duplicate_images="warn") == splits
    assert f"{tmp_path / 'a.jpg'}: ids 1, 7" in caplog.text


def test_training_image_also_in_test_is_named(tmp_path, tokenizer):
    splits = clean_splits(tmp_path)
    splits["test"].append(PersonRecord(tmp_path / "b.jpg", 2, ("a man",), "test"))
    with pytest.raises(DataError) as error:
        validate(splits, tokenizer)
    assert str(error.value).splitlines()[:2] == [
        "1 images of DATASET are in more than one split (an image seen in training inflates test results); "
        "first 1:", f"  {tmp_path / 'b.jpg'}: train, test"]


def test_all_problems_are_reported_together(tmp_path, tokenizer):
    splits = bad_caption_splits(tmp_path)
    splits["val"] = []
    splits["test"].append(PersonRecord(tmp_path / "b.jpg", 2, ("a man",), "test"))
    (tmp_path / "d.jpg").unlink()
    with pytest.raises(DataError) as error:
        validate(splits, tokenizer, needed=("train", "val", "test"))
    heads = [line for line in str(error.value).splitlines() if not line.startswith("  ")]
    assert [h.split(";")[0].split(" (")[0] for h in heads] == [
        "4 of 7 captions of DATASET are empty or only [UNK]/punctuation after tokenizing",
        "split 'val' of DATASET is empty, but the run needs it",
        "1 images of DATASET are in more than one split",
        "1 of 3 images of DATASET are missing or unreadable"]


def test_unknown_duplicate_policy_is_a_config_error(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="data.duplicate_images must be one of error, warn, got 'ignore'"):
        validate(clean_splits(tmp_path), tokenizer, duplicate_images="ignore")


def test_tokenizer_settings_are_restored(tmp_path, tokenizer):
    encode(tokenizer, ["a man"], max_len=9)
    before = (tokenizer.truncation, tokenizer.padding)
    validate(clean_splits(tmp_path), tokenizer)
    assert (tokenizer.truncation, tokenizer.padding) == before and before[0]["max_length"] == 9


def synthetic_config(root: Path, *overrides: str):
    return load_config(*tiny_config(root, root / "run", "data.synthetic.train_ids=7", "data.synthetic.val_ids=1",
                                    "data.synthetic.test_ids=2", *overrides))


def test_load_splits_validates_the_synthetic_set_cleanly(tmp_path):
    splits = load_splits(synthetic_config(tmp_path))
    assert {name: len(part) for name, part in splits.items()} == {"train": 7 * 4, "val": 1 * 4, "test": 2 * 4}


def test_load_splits_finds_a_corrupt_test_image_before_training(tmp_path):
    test_image = load_splits(synthetic_config(tmp_path))["test"][-1].image_path
    test_image.write_bytes(test_image.read_bytes()[:50])
    with pytest.raises(DataError, match=re.escape(f"{test_image}: unreadable")):
        load_splits(synthetic_config(tmp_path))


def test_load_splits_applies_the_duplicate_and_caption_settings(tmp_path):
    load_splits(synthetic_config(tmp_path))
    annotation = tmp_path / "synthetic-pedes" / "reid_raw.json"
    raw = json.loads(annotation.read_text(encoding="utf-8"))
    raw[0]["captions"][1] = RUNIC
    raw[0].pop("regions", None)  # optional; its per-word part names would no longer fit the edited caption
    leaked = dict(raw[1], split="test", id=raw[-1]["id"])  # a training image also listed in test
    annotation.write_text(json.dumps(raw + [leaked]), encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_splits(synthetic_config(tmp_path))
    message = str(error.value)
    assert f"caption 1 '{RUNIC}': only [UNK]/punctuation" in message
    assert f"{tmp_path / 'synthetic-pedes' / 'imgs' / raw[1]['file_path']}: train, test" in message
    splits = load_splits(synthetic_config(tmp_path, "data.drop_bad_captions=true", "data.duplicate_images=warn"))
    assert len(splits["train"][0].captions) == 1 and len(splits["test"]) == 2 * 4 + 1
