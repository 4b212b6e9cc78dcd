"""Folder search: the cached index (reuse, incremental update), two-stage ranking against a brute-force
scoring of the same model, the CLI, and the errors for bad images, empty folders and foreign checkpoints."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import retrieve
from datasets.records import clean_caption
from datasets.tokenization import encode
from engine.builders import build_eval_transform, build_model, tokenizer_for
from engine.folder_index import INDEX_DIR_NAME, GalleryError, index_folder, list_images
from engine.folder_search import load_search_model, search
from engine.visualize import RowLayout, line_height
from models.checkpoint_import import CheckpointMismatchError
from utils.checkpoint import save_atomic
from utils.config import config_to_dict, load_config
from utils.vocab import ENC_ID

IMAGE_NAMES = ["a.png", "b.jpg", "sub/c.png", "sub/d.jpeg", "sub/deeper/e.bmp", "f.PNG"]
QUERIES = ["A man in a red jacket, with a black backpack.", "a woman wearing blue jeans and white shoes",
           "a person with long hair carrying a yellow bag"]
KEY = "test-key_128x64"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised cada_tiny saved in our checkpoint format (weights + config)."""
    torch.manual_seed(0)
    config = load_config("configs/synthetic.yaml", ["train.device=cpu"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_atomic({"model": build_model(config).state_dict(), "config": config_to_dict(config)}, path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_search_model(checkpoint)


def noise_image(seed, size=(48, 96)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "photos"
    for seed, name in enumerate(IMAGE_NAMES):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        noise_image(seed, (40 + 4 * seed, 90)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.png").write_bytes(b"resource fork, hidden: ignored")
    return folder


class CountingEncoder:
    """Stands in for ``model.encode_image`` and counts the images it is given."""

    def __init__(self, model, monkeypatch):
        self.original, self.images = model.encode_image, 0
        monkeypatch.setattr(model, "encode_image", self)

    def __call__(self, images):
        self.images += images.shape[0]
        return self.original(images)


def build_index(loaded, folder, **kwargs):
    model, config = loaded
    return index_folder(model, folder, build_eval_transform(config), KEY, torch.device("cpu"), batch_size=4, **kwargs)


def fresh_encoding(loaded, path):
    """(E,) feature and (1+N, D) tokens of one image encoded on its own in fp32 (bypassing any counter)."""
    model, config = loaded
    with torch.no_grad():
        tokens = type(model).encode_image(model, build_eval_transform(config)(Image.open(path)).unsqueeze(0))
        return model.image_features(tokens)[0], tokens[0]


def test_list_images_is_recursive_sorted_and_skips_hidden_and_other_files(gallery):
    assert list_images(gallery) == sorted(IMAGE_NAMES)


def test_second_index_reuses_cache_and_reencodes_only_changed_files(loaded, gallery, monkeypatch):
    counter = CountingEncoder(loaded[0], monkeypatch)
    first = build_index(loaded, gallery)
    assert (counter.images, first.encoded, first.files) == (6, 6, sorted(IMAGE_NAMES))
    assert (gallery / INDEX_DIR_NAME / f"{KEY}.pt").is_file()
    assert first.features.dtype == first.image_tokens.dtype == torch.float16
    for row, name in enumerate(first.files):
        feature, tokens = fresh_encoding(loaded, gallery / name)
        torch.testing.assert_close(first.features[row].float(), feature, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(first.image_tokens[row].float(), tokens, atol=1e-2, rtol=2e-3)
    counter.images = 0

    second = build_index(loaded, gallery)
    assert (counter.images, second.encoded) == (0, 0)
    assert second.files == first.files
    assert torch.equal(second.features, first.features) and torch.equal(second.image_tokens, first.image_tokens)

    changed = gallery / "sub/c.png"
    noise_image(99, (60, 90)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = build_index(loaded, gallery)
    assert (counter.images, third.encoded) == (1, 1)
    row = third.files.index("sub/c.png")
    torch.testing.assert_close(third.features[row].float(), fresh_encoding(loaded, changed)[0], atol=2e-3, rtol=2e-3)
    others = [i for i in range(6) if i != row]
    assert torch.equal(third.features[others], first.features[others])
    assert not torch.allclose(third.features[row], first.features[row])

    noise_image(7).save(gallery / "new.png")
    (gallery / "b.jpg").unlink()
    fourth = build_index(loaded, gallery)
    assert (counter.images, fourth.encoded) == (2, 1)
    assert fourth.files == sorted(set(IMAGE_NAMES) - {"b.jpg"} | {"new.png"})
    assert build_index(loaded, gallery).encoded == 0 and counter.images == 2  # the update was cached


def brute_force_ranking(model, tokenizer, index, query, k, max_len):
    """Every image scored (cosine and ITM logit for all of them), then ranked in Python: the top k by cosine
    re-sorted by cos + logit, then the rest by cosine; ties to the lower index."""
    ids, mask = encode(tokenizer, [clean_caption(query)], max_len)
    size = len(index)
    with torch.no_grad():
        text = model.text_features(model.encode_text(ids, mask))[0]
        fused_ids = ids.clone()
        fused_ids[0, 0] = ENC_ID
        logits = model.itm_match_logit(fused_ids.expand(size, -1), mask.expand(size, -1), index.image_tokens.float())
    cosines = [float(F.normalize(index.features[g].float(), dim=0) @ text) for g in range(size)]
    combined = [cosines[g] + float(logits[g]) for g in range(size)]
    by_cosine = sorted(range(size), key=lambda g: (-cosines[g], g))
    candidates = sorted(by_cosine[:k], key=lambda g: (-combined[g], g))
    return candidates + by_cosine[k:], [combined[g] for g in candidates] + [cosines[g] for g in by_cosine[k:]]


def test_ranking_equals_brute_force_two_stage_scoring(loaded, gallery):
    model, config = loaded
    index = build_index(loaded, gallery)
    tokenizer = tokenizer_for(config)
    expected = [brute_force_ranking(model, tokenizer, index, q, 3, config.model.max_text_len) for q in QUERIES]
    results = search(model, index, tokenizer, QUERIES, topk=4, k_test=3, max_text_len=config.model.max_text_len,
                     batch_size=2)  # 4 > k_test: both the re-ranked and the cosine-ordered part are checked
    assert [r.query for r in results] == QUERIES
    for result, (order, scores) in zip(results, expected):
        assert result.gallery_indices.tolist() == order[:4]
        torch.testing.assert_close(result.scores, torch.tensor(scores[:4]), atol=1e-4, rtol=0)
        assert result.reranked == 3


def test_cli_prints_ranked_table_and_writes_grid(checkpoint, gallery, tmp_path, capsys):
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text(f"{QUERIES[1]}\n\n{QUERIES[2]}\n")
    out = tmp_path / "grid.png"
    retrieve.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--query", QUERIES[0],
                   "--queries-file", str(queries_file), "--topk", "4", "--out", str(out), "--workers", "0"])
    printed = capsys.readouterr().out
    blocks = printed.split("\n\n")
    assert [block.splitlines()[0] for block in blocks[:3]] == [f"query {i + 1}: {q}" for i, q in enumerate(QUERIES)]
    for block in blocks[:3]:
        ranked = block.splitlines()[2:]
        assert [line.split()[0] for line in ranked] == ["1", "2", "3", "4"]
        assert {line.split()[2] for line in ranked} <= set(IMAGE_NAMES)
    layout = RowLayout(4, (128, 64), line_height())
    assert Image.open(out).size == (layout.width, 3 * layout.height)
    assert f"wrote {out}" in printed


@pytest.mark.parametrize("broken", ["garbage", "truncated"])
def test_unreadable_image_is_named_and_skipped_only_with_the_flag(loaded, gallery, broken, capsys, caplog):
    bad = gallery / "sub" / "broken.png"
    if broken == "garbage":
        bad.write_bytes(b"\x89PNG not really")
    else:
        noise_image(5).save(bad)
        bad.write_bytes(bad.read_bytes()[:400])
    with pytest.raises(GalleryError, match=r"(?s)1 unreadable image.*sub/broken\.png.*--skip-bad-images"):
        build_index(loaded, gallery)
    assert build_index(loaded, gallery, skip_bad_images=True).encoded == 0  # the readable ones were cached

    index = build_index(loaded, gallery, skip_bad_images=True)
    assert index.files == sorted(IMAGE_NAMES) and index.skipped == ["sub/broken.png"]
    assert "skipped 1 unreadable image(s)" in caplog.text


def test_cli_reports_skipped_images_and_fails_without_the_flag(checkpoint, gallery, tmp_path, capsys):
    (gallery / "broken.jpg").write_bytes(b"")
    args = ["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--query", "a man", "--out", "",
            "--workers", "0"]
    with pytest.raises(GalleryError, match=r"(?s)1 unreadable image.*broken\.jpg"):
        retrieve.main(args)
    retrieve.main(args + ["--skip-bad-images"])
    assert "skipped 1 unreadable image(s): broken.jpg" in capsys.readouterr().out


def test_empty_or_missing_folder_is_an_error_naming_it(loaded, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no pictures here")
    with pytest.raises(GalleryError, match=f"no images .* in {empty}"):
        build_index(loaded, empty)
    with pytest.raises(GalleryError, match=f"gallery folder not found: {tmp_path / 'absent'}"):
        build_index(loaded, tmp_path / "absent")


def test_checkpoint_of_another_architecture_names_mismatching_keys(checkpoint, gallery, tmp_path):
    stored = torch.load(checkpoint, weights_only=True)
    renamed = {key.replace("visual_encoder.", "visual."): value for key, value in stored["model"].items()}
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": renamed, "config": stored["config"]}, foreign)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*visual_encoder\.pos_embed.*unexpected.*"
                                                      r"visual\.pos_embed"):
        load_search_model(foreign)

    resized = dict(stored["model"], **{"text_proj.weight": torch.zeros(256, 64)})
    torch.save({"model": resized, "config": stored["config"]}, foreign)
    with pytest.raises(CheckpointMismatchError,
                       match=r"text_proj\.weight: checkpoint \(256, 64\) vs model \(256, 128\)"):
        load_search_model(foreign)
    with pytest.raises(CheckpointMismatchError, match=r"text_proj\.weight"):
        retrieve.main(["--checkpoint", str(foreign), "--gallery", str(gallery), "--query", "a man", "--out", ""])


def test_queries_file_in_another_encoding_is_named(tmp_path):
    from engine.folder_search import read_queries_file
    from utils.errors import DataError
    path = tmp_path / "queries.txt"
    path.write_bytes("une personne \xe9l\xe9gante\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"queries.txt: not UTF-8 \(byte 0xe9 at offset 13\)"):
        read_queries_file(path)
    path.write_text("a man in a red coat\n\n  a woman  \n", encoding="utf-8")
    assert read_queries_file(path) == ["a man in a red coat", "a woman"]
