"""Dataset readers on small hand-written files in the real formats: record parsing, caption cleaning,
split mapping, and the error messages for bad files."""
import json
from pathlib import Path

import pytest

from datasets.cuhk_pedes import read_cuhk_pedes
from datasets.icfg_pedes import read_icfg_pedes
from datasets.records import DatasetFormatError, PersonRecord, clean_caption, map_split
from datasets.registry import DATASETS, load_records
from datasets.rstpreid import read_rstpreid
from utils.errors import ConfigError, DataError


def write_dataset(folder: Path, annotation_name: str, records: list, make_images: bool = True,
                  path_key: str = "file_path") -> Path:
    """Writes ``records`` as the annotation file and an empty file for every listed image."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / annotation_name).write_text(json.dumps(records), encoding="utf-8")
    for record in records if make_images else ():
        image = folder / "imgs" / record[path_key]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"jpeg")
    return folder


def cuhk_record(person_id=1, split="train", path="train_query/p1_s1.jpg", captions=("A man.", "He walks.")):
    return {"split": split, "captions": list(captions), "file_path": path,
            "processed_tokens": [c.lower().split() for c in captions], "id": person_id}


def test_clean_caption_by_hand():
    raw = 'A Man; wears (a) "RED" shirt...and  blue\tjeans!\n #tall* ~ok: yes'
    assert clean_caption(raw) == "a man wears a red shirt and blue jeans tall ok yes"
    assert clean_caption("A woman, tall/thin; with a bag-pack?") == "a woman, tall/thin with a bag-pack?"
    assert clean_caption("one two. three four", max_words=3) == "one two three"
    long_caption = " ".join(f"w{i}" for i in range(80))
    assert clean_caption(long_caption).split() == [f"w{i}" for i in range(72)]


def test_split_mapping_follows_irra():
    assert [map_split(s) for s in ("train", "test", "val", "other", "Train", "")] == \
        ["train", "test", "val", "val", "val", "val"]


def test_cuhk_pedes_reads_records_in_file_order(tmp_path):
    records = [cuhk_record(11003, "train", "train_query/p11600_s14885.jpg",
                           ["A woman is wearing a gray shirt, a pair of brown pants and a pair of shoes.",
                            "She is wearing a dark grey top and light colored pants."]),
               cuhk_record("12005", "test", "test_query/p2703_s3526.jpg", ["One.", "Two!", "Three (3)."]),
               cuhk_record(11500, "val", "cam_a/001_45.bmp", ["Person: walking."])]
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", records)
    result = read_cuhk_pedes(folder)
    assert result[0] == PersonRecord(
        image_path=(folder / "imgs" / "train_query/p11600_s14885.jpg").resolve(), person_id=11003,
        captions=("a woman is wearing a gray shirt, a pair of brown pants and a pair of shoes",
                  "she is wearing a dark grey top and light colored pants"), split="train")
    assert result[1].person_id == 12005 and result[1].captions == ("one", "two", "three 3")
    assert [r.split for r in result] == ["train", "test", "val"]
    assert all(r.image_path.is_absolute() for r in result)


@pytest.mark.parametrize("annotation_name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_pedes_accepts_both_file_names(tmp_path, annotation_name):
    records = [cuhk_record(0, "train", "train/0001/0001_c1_0001.jpg", ["A man in a black coat."]),
               cuhk_record(3102, "test", "test/0005/0005_c3_0002.jpg", ["A woman in white."])]
    folder = write_dataset(tmp_path / "ICFG-PEDES", annotation_name, records)
    result = read_icfg_pedes(folder)
    assert [(r.person_id, r.split, r.captions) for r in result] == \
        [(0, "train", ("a man in a black coat",)), (3102, "test", ("a woman in white",))]
    assert result[1].image_path == (folder / "imgs" / "test/0005/0005_c3_0002.jpg").resolve()


def test_rstpreid_reads_img_path(tmp_path):
    records = [{"id": 0, "img_path": "0000_c5_0001.jpg", "captions": ["A man.", "The man walks."], "split": "train"},
               {"id": 3901, "img_path": "3901_c12_0004.jpg", "captions": ["A lady.", "Her bag."], "split": "val"}]
    folder = write_dataset(tmp_path / "RSTPReid", "data_captions.json", records, path_key="img_path")
    result = read_rstpreid(folder)
    assert [(r.image_path.name, r.person_id, r.split) for r in result] == \
        [("0000_c5_0001.jpg", 0, "train"), ("3901_c12_0004.jpg", 3901, "val")]


def test_rstpreid_rejects_file_path_key_naming_record(tmp_path):
    records = [{"id": 0, "img_path": "a.jpg", "captions": ["x"], "split": "train"},
               {"id": 1, "file_path": "b.jpg", "captions": ["y"], "split": "train"}]
    folder = write_dataset(tmp_path / "RSTPReid", "data_captions.json", records, make_images=False)
    with pytest.raises(DatasetFormatError, match=r"data_captions\.json: record 1: missing key 'img_path'"):
        read_rstpreid(folder)


def test_bad_json_names_the_file(tmp_path):
    folder = tmp_path / "CUHK-PEDES"
    (folder / "imgs").mkdir(parents=True)
    (folder / "reid_raw.json").write_text('[{"id": 1,', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"reid_raw\.json: not valid JSON"):
        read_cuhk_pedes(folder)
    (folder / "reid_raw.json").write_text('{"annotations": []}', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="expected a JSON list of records"):
        read_cuhk_pedes(folder)


def test_format_errors_are_the_projects_data_error():
    assert issubclass(DatasetFormatError, DataError)


def test_latin1_file_is_named_with_the_bad_byte(tmp_path):
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", [])
    text = json.dumps([cuhk_record(1, path="a.jpg", captions=["A café visitor."])], ensure_ascii=False)
    (folder / "reid_raw.json").write_bytes(text.encode("latin-1"))
    offset = text.index("é")
    expected = rf"reid_raw\.json: not UTF-8 \(byte 0xe9 at offset {offset}\); re-save it as UTF-8"
    with pytest.raises(DataError, match=expected):
        read_cuhk_pedes(folder, check_images=False)


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", [])
    text = json.dumps([cuhk_record(1, path="a.jpg", captions=["A café visitor."])], ensure_ascii=False)
    (folder / "reid_raw.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_cuhk_pedes(folder, check_images=False)[0].captions == ("a café visitor",)


def test_caption_empty_after_cleaning_is_kept_for_validation(tmp_path):
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json",
                           [cuhk_record(1, path="a.jpg", captions=["fine", " ... "])], make_images=False)
    assert read_cuhk_pedes(folder, check_images=False)[0].captions == ("fine", "")


@pytest.mark.parametrize("missing_key", ["id", "file_path", "captions", "split"])
def test_missing_key_names_file_record_and_key(tmp_path, missing_key):
    bad = cuhk_record(2, path="b.jpg")
    del bad[missing_key]
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", [cuhk_record(1, path="a.jpg"), bad],
                           make_images=False)
    with pytest.raises(DatasetFormatError, match=rf"reid_raw\.json: record 1: missing key '{missing_key}'"):
        read_cuhk_pedes(folder)


@pytest.mark.parametrize("field, value, message", [
    ("captions", [], "'captions' must be a non-empty list of strings"),
    ("captions", "a man in red", "'captions' must be a non-empty list of strings"),
    ("captions", ["fine", 3], "'captions' must be a non-empty list of strings"),
    ("id", "abc", "'id' must be an integer"),
    ("id", 1.5, "'id' must be an integer"),
    ("id", None, "'id' must be an integer"),
    ("id", [1], "'id' must be an integer"),
    ("id", 2 ** 70, "'id' 1180591620717411303424 does not fit a 64-bit integer"),
    ("captions", {"0": "a man"}, "'captions' must be a non-empty list of strings"),
    ("captions", [None], "'captions' must be a non-empty list of strings"),
    ("file_path", ["a.jpg"], "'file_path' must be a non-empty string"),
    ("file_path", "a\u0000.jpg", "'file_path' must be a non-empty string"),
    ("split", None, "'split' must be a string"),
    ("file_path", "", "'file_path' must be a non-empty string"),
])
def test_bad_values_are_rejected_with_record_index(tmp_path, field, value, message):
    bad = cuhk_record(3, path="c.jpg")
    bad[field] = value
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", [cuhk_record(1, path="a.jpg"), bad],
                           make_images=False)
    with pytest.raises(DatasetFormatError, match=r"record 1: .*" + message.replace("(", r"\(")):
        read_cuhk_pedes(folder)


def test_missing_images_are_counted_and_listed(tmp_path):
    records = [cuhk_record(i, path=f"train_query/p{i}.jpg") for i in range(1, 4)]
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", records)
    for i in (1, 3):
        (folder / "imgs" / f"train_query/p{i}.jpg").unlink()
    with pytest.raises(DataError, match=r"2 of 3 images listed in .*reid_raw\.json are missing.*p1\.jpg"):
        read_cuhk_pedes(folder)
    assert len(read_cuhk_pedes(folder, check_images=False)) == 3


def test_missing_folder_file_or_imgs_say_what_belongs_there(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder not found: .*nowhere \(expected reid_raw\.json"):
        read_cuhk_pedes(tmp_path / "nowhere")
    icfg = tmp_path / "ICFG-PEDES"
    icfg.mkdir()
    with pytest.raises(DataError, match=r"expected ICFG-PEDES\.json or ICFG_PEDES\.json"):
        read_icfg_pedes(icfg)
    rstp = tmp_path / "RSTPReid"
    rstp.mkdir()
    (rstp / "data_captions.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"image folder not found: .*imgs"):
        read_rstpreid(rstp)


def test_caption_all_without_reid_raw_explains_the_missing_split(tmp_path):
    folder = tmp_path / "CUHK-PEDES"
    (folder / "imgs").mkdir(parents=True)
    (folder / "caption_all.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"reid_raw\.json not found.*caption_all\.json .*lacks the 'split'"):
        read_cuhk_pedes(folder)


def test_registry_reads_the_named_folder_and_lists_known_names(tmp_path):
    records = [{"id": 7, "img_path": "x.jpg", "captions": ["A."], "split": "test"}]
    write_dataset(tmp_path / "RSTPReid", "data_captions.json", records, path_key="img_path")
    assert [r.person_id for r in load_records("rstpreid", tmp_path)] == [7]
    assert set(DATASETS) == {"cuhk_pedes", "icfg_pedes", "rstpreid", "synthetic"}
    with pytest.raises(ConfigError, match="unknown dataset 'market'; known: cuhk_pedes, icfg_pedes, rstpreid"):
        load_records("market", tmp_path)


def test_long_wrong_values_are_quoted_short(tmp_path):
    bad = cuhk_record(2, path="b.jpg")
    bad["captions"] = {f"caption {i}": "a man in a red coat" for i in range(50)}
    folder = write_dataset(tmp_path / "CUHK-PEDES", "reid_raw.json", [bad], make_images=False)
    with pytest.raises(DataError) as error:
        read_cuhk_pedes(folder)
    quoted = str(error.value).split("got ", 1)[1]
    assert quoted.startswith("{'caption 0': 'a man in a red coat'") and quoted.endswith("...") and len(quoted) == 83
