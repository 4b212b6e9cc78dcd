"""Colour-swapped captions as extra ITM negatives (loss.itm.colour_swap_negatives)."""
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import models.cada as cada_module
from datasets.colour_swap import BASIC_COLOURS, colour_table, swap_one_colour
from datasets.person_search import TrainPairs
from datasets.records import PersonRecord
from datasets.synthetic.identity import COLOURS, HAIR_COLOURS
from datasets.tokenization import BUNDLED_VOCAB, build_tokenizer, encode
from datasets.transforms import build_image_transform
from engine.builders import build_train_set, tokenizer_for
from models.losses.itm import anchor_count, itm_loss
from models.registry import get_model_spec
from tests.test_trimming import SIZE, training_batch
from utils.config import load_config
from utils.config_schema import ITMLossConfig, LossConfig
from utils.errors import ConfigError
from utils.vocab import ENC_ID

TOKENIZER = build_tokenizer()
TABLE = colour_table(TOKENIZER)


def tokens(caption, length=20):
    return encode(TOKENIZER, [caption], length)[0][0]


def words(ids):
    return [TOKENIZER.id_to_token(int(i)) for i in ids]


def test_a_swap_changes_exactly_one_colour_word_into_another_colour():
    ids = tokens("a man in a red jacket and black trousers")
    seen_positions, seen_pairs = Counter(), Counter()
    for seed in range(400):
        swapped, ok = swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(seed))
        assert ok and swapped.shape == ids.shape
        changed = (swapped != ids).nonzero().flatten().tolist()
        assert len(changed) == 1
        before, after = words(ids[changed])[0], words(swapped[changed])[0]
        assert before in ("red", "black") and after in BASIC_COLOURS and after != before
        seen_positions[before] += 1
        seen_pairs[before, after] += 1
    # both colour words get swapped, into each of the ten other colours
    assert min(seen_positions.values()) > 150
    assert len(seen_pairs) == 2 * (len(BASIC_COLOURS) - 1)


def test_the_same_seed_gives_the_same_swap():
    ids = tokens("a woman with grey hair, a pink coat and white shoes")
    first = swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(3))
    again = swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0])


def test_gray_is_swapped_but_never_into_grey():
    ids = tokens("a gray coat")
    grey = TOKENIZER.token_to_id("grey")
    for seed in range(100):
        swapped, ok = swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(seed))
        assert ok and grey not in swapped.tolist() and not torch.equal(swapped, ids)


def test_a_caption_without_a_colour_comes_back_unchanged():
    ids = tokens("a man is walking with a bag")
    swapped, ok = swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(0))
    assert not ok and torch.equal(swapped, ids)


def test_every_synthetic_garment_colour_can_be_swapped():
    assert set(COLOURS) == set(BASIC_COLOURS)
    assert set(HAIR_COLOURS) - set(BASIC_COLOURS) == {"blonde"}  # a hair colour only: left as it is


def test_train_pairs_carry_swaps_without_moving_the_other_streams(tmp_path):
    path = tmp_path / "person.png"
    Image.new("RGB", (8, 16), (200, 30, 30)).save(path)
    records = [PersonRecord(path, person_id=0, captions=("a man in a red coat", "a man walking"), split="train")]
    transform = build_image_transform((16, 8), train=True, flip=True, pad=2, erasing=0.5)
    plain = TrainPairs(records, transform, TOKENIZER, 16, captions="all")
    swapping = TrainPairs(records, transform, TOKENIZER, 16, captions="all", colour_swap=TABLE)
    for seed in range(5):
        item, reference = swapping[(0, seed)], plain[(0, seed)]
        assert torch.equal(item["image"], reference["image"])  # the augmentation stream is unchanged
        assert bool(item["swap_valid"]) and int((item["swap_input_ids"] != item["input_ids"]).sum()) == 1
    no_colour = swapping[(1, 0)]
    assert not bool(no_colour["swap_valid"]) and torch.equal(no_colour["swap_input_ids"], no_colour["input_ids"])


def test_itm_loss_leaves_out_invalid_negatives():
    torch.manual_seed(0)
    pos, neg = torch.randn(2, 2), torch.randn(5, 2)
    valid = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(itm_loss(pos, neg, valid), itm_loss(pos, neg[valid]))
    torch.testing.assert_close(itm_loss(pos, neg, torch.ones(5, dtype=torch.bool)), itm_loss(pos, neg))
    with pytest.raises(ValueError, match="neg_valid"):
        itm_loss(pos, neg, valid[:3])


def swap_batch():
    batch = training_batch()
    swapped, valid = zip(*(swap_one_colour(ids, *TABLE, generator=torch.Generator().manual_seed(i))
                           for i, ids in enumerate(batch["input_ids"])))
    batch["swap_input_ids"], batch["swap_valid"] = torch.stack(swapped), torch.tensor(valid)
    return batch


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_swap_rows_are_itm_negatives_scored_on_the_anchors_own_image(fraction, monkeypatch):
    """ITM with swaps = the reference ITM's rows plus, written out by hand, each anchor's image fused with its
    swapped caption and labelled 0 (captions naming no colour left out); the other terms do not change."""
    batch = swap_batch()
    assert batch["swap_valid"].tolist() == [True, True, True, True]
    batch["swap_valid"][1] = False  # as if caption 1 named no colour
    torch.manual_seed(0)
    plain = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=LossConfig(local_pairs_fraction=fraction))
    swapping = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=LossConfig(
        local_pairs_fraction=fraction, itm=ITMLossConfig(colour_swap_negatives=True)))
    swapping.load_state_dict(plain.state_dict())
    plain.eval(), swapping.eval()
    captured = {}

    def capture(positive, negative, valid=None):
        captured["pos"], captured["neg"] = positive.detach(), negative.detach()
        return itm_loss(positive, negative, valid)
    with torch.no_grad():
        reference = plain(batch)
        monkeypatch.setattr(cada_module, "itm_loss", capture)
        plain(batch)
        reference_rows = torch.cat([captured["pos"], captured["neg"]])
        losses = swapping(batch)
        m = anchor_count(4, fraction)
        assert captured["neg"].shape[0] == 3 * m
        ids = batch["swap_input_ids"][:m].clone()
        ids[:, 0] = ENC_ID
        images = plain.encode_image(batch["image"][:m])
        swap_rows = plain.itm_head(plain.fuse(ids, batch["attention_mask"][:m], images)[:, 0]).float()
    rows = torch.cat([reference_rows, swap_rows])
    labels = torch.tensor([1] * m + [0] * (3 * m))
    keep = torch.ones(4 * m, dtype=torch.bool)
    keep[3 * m + 1] = False  # anchor 1's swap (m is 4 or 2)
    expected = -torch.log_softmax(rows, dim=1)[torch.arange(4 * m), labels][keep].mean()
    torch.testing.assert_close(losses["itm"], expected, atol=1e-5, rtol=1e-5)
    for name in ("global", "atp", "ara"):
        torch.testing.assert_close(losses[name], reference[name], atol=1e-6, rtol=1e-6)


def test_swap_negatives_need_swapped_captions_in_the_batch():
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE,
                             objective=LossConfig(itm=ITMLossConfig(colour_swap_negatives=True)))
    with pytest.raises(ValueError, match="swap_input_ids"):
        model(training_batch())


def test_a_vocabulary_without_a_colour_word_is_a_config_error(tmp_path):
    words = BUNDLED_VOCAB.read_text(encoding="utf-8").splitlines()
    words[words.index("grey")] = "[unused-grey]"
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml",
                         [f"model.tokenizer={tmp_path}", "loss.itm.colour_swap_negatives=true"])
    with pytest.raises(ConfigError, match="colour_swap_negatives.*'grey' is not a single token"):
        build_train_set(config, [], tokenizer_for(config))
