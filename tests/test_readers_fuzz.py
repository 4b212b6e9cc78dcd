"""Fuzz: 200 seeded corruptions of a valid annotation per reader (truncation, deleted keys, wrong types,
Latin-1, garbage bytes, empty file, non-list top level). Reading and then validating each one either
gives well-formed records or raises the project's DataError, never any other exception."""
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.icfg_pedes import read_icfg_pedes
from datasets.person_search import split_records
from datasets.records import SPLITS, PersonRecord
from datasets.rstpreid import read_rstpreid
from datasets.synthetic import generate_dataset
from datasets.tokenization import build_tokenizer
from datasets.validation import validate_splits
from utils.errors import DataError

CASES = 200
WRONG_VALUES = ([], {}, None, 1.5, "not-a-number", 7, True, ["a", 1], {"captions": ["x"]}, "")

ICFG_RECORDS = [
    {"id": 0, "file_path": "train/0000/0000_000_01_0303morning_0001_0.jpg",
     "captions": ["The man has black hair and wears a grey jacket over a white shirt, dark trousers and brown shoes."],
     "processed_tokens": [["the", "man", "has", "black", "hair"]], "split": "train"},
    {"id": 1, "file_path": "train/0001/0001_002_03_0303morning_0007_1.jpg",
     "captions": ["A man in a blue coat carries a red umbrella."],
     "processed_tokens": [["a", "man", "in", "a", "blue", "coat"]], "split": "train"},
    {"id": 3102, "file_path": "test/0000/0000_003_05_0303afternoon_0042_1.jpg",
     "captions": ["A woman with a ponytail wears a pink top, a black skirt and carries a blue bag."],
     "processed_tokens": [["a", "woman", "with", "a", "ponytail"]], "split": "test"},
]
RSTP_RECORDS = [
    {"id": 0, "img_path": "0000_c5_0001.jpg",
     "captions": ["A man with short black hair is wearing a dark blue down jacket and grey sports shoes.",
                  "The man walks forward; he wears a navy padded coat and black pants."], "split": "train"},
    {"id": 3701, "img_path": "3701_c2_0002.jpg",
     "captions": ["A girl in a yellow dress holds a white phone.", "She has long hair and white sandals."],
     "split": "val"},
    {"id": 3901, "img_path": "3901_c12_0004.jpg",
     "captions": ["The woman has long brown hair and wears a white sweater and light blue jeans.",
                  "A lady in a white knit sweater carries a red bag on her left shoulder."], "split": "test"},
]


def write_hand_made(folder: Path, annotation_name: str, records: list, path_key: str) -> Path:
    for record in records:
        image = folder / "imgs" / record[path_key]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 32), (90, 90, 200)).save(image)
    (folder / annotation_name).write_text(json.dumps(records), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def datasets_on_disk(tmp_path_factory):
    """reader name → (reader, folder, annotation file); images are written once."""
    root = tmp_path_factory.mktemp("fuzz")
    cuhk = generate_dataset(root / "CUHK-PEDES", 2, 1, 1, seed=0, images_per_id=1)
    return {
        "cuhk_pedes": (read_cuhk_pedes, cuhk, cuhk / "reid_raw.json"),
        "icfg_pedes": (read_icfg_pedes, write_hand_made(root / "ICFG-PEDES", "ICFG-PEDES.json", ICFG_RECORDS,
                                                        "file_path"), None),
        "rstpreid": (read_rstpreid, write_hand_made(root / "RSTPReid", "data_captions.json", RSTP_RECORDS,
                                                    "img_path"), None),
    }


def corrupt(valid: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random corruption of a valid annotation file: ``(description, new bytes)``."""
    records = json.loads(valid)
    kind = rng.choice(["truncate", "delete_key", "wrong_type", "wrong_type_nested", "latin1", "garbage", "empty",
                       "not_a_list"])
    record = rng.choice(records)
    if kind == "truncate":
        cut = rng.randrange(len(valid))
        return f"truncate at byte {cut}", valid[:cut]
    if kind == "delete_key":
        key = rng.choice(sorted(record))
        del record[key]
        return f"delete '{key}'", json.dumps(records).encode()
    if kind == "wrong_type":
        key, value = rng.choice(sorted(record)), rng.choice(WRONG_VALUES)
        record[key] = value
        return f"'{key}' = {value!r}", json.dumps(records).encode()
    if kind == "wrong_type_nested":
        index, value = rng.randrange(len(record["captions"])), rng.choice(WRONG_VALUES)
        record["captions"][index] = value
        return f"caption {index} = {value!r}", json.dumps(records).encode()
    if kind == "latin1":
        caption = record["captions"][0]
        at = rng.randrange(len(caption) + 1)
        record["captions"][0] = caption[:at] + rng.choice(["é", "über", "façade", "ß", "±"]) + caption[at:]
        return "Latin-1 encoded", json.dumps(records, ensure_ascii=False).encode("latin-1")
    if kind == "garbage":
        at = rng.randrange(len(valid) + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return f"garbage {junk!r} at byte {at}", valid[:at] + junk + valid[at:]
    if kind == "empty":
        return "empty file", b""
    top = rng.choice([{"annotations": records}, records[0], "records", 3, None])
    return f"top level {type(top).__name__}", json.dumps(top).encode()


def check_well_formed(records: list) -> None:
    for record in records:
        assert isinstance(record, PersonRecord) and record.image_path.is_absolute()
        assert type(record.person_id) is int and record.split in SPLITS
        assert record.captions and all(isinstance(c, str) for c in record.captions)


@pytest.mark.parametrize("reader_name", ["cuhk_pedes", "icfg_pedes", "rstpreid"])
def test_corrupted_annotations_load_or_raise_data_error(datasets_on_disk, reader_name):
    reader, folder, annotation = datasets_on_disk[reader_name]
    annotation = annotation or next(folder.glob("*.json"))
    valid = annotation.read_bytes()
    tokenizer = build_tokenizer()
    outcomes, failures = {"loaded": 0, "data_error": 0}, []
    try:
        for seed in range(CASES):
            description, data = corrupt(valid, random.Random(seed))
            annotation.write_bytes(data)
            try:
                records = reader(folder)
                check_well_formed(records)
                validate_splits(split_records(records), [], tokenizer, 73, str(folder))
                outcomes["loaded"] += 1
            except DataError as error:
                assert str(folder) in str(error), f"seed {seed} ({description}): {error}"  # names where
                outcomes["data_error"] += 1
            except Exception as error:  # the failure this test exists to find
                failures.append(f"seed {seed} ({description}): {type(error).__name__}: {error}")
    finally:
        annotation.write_bytes(valid)
    assert not failures, "\n".join(failures)
    assert outcomes["loaded"] >= 5 and outcomes["data_error"] >= 100, outcomes  # both paths were exercised
