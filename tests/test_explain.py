"""Per-word Grad-CAM heatmaps: the formula on hand numbers, a model whose cross-attention is forced onto one patch,
word-piece merging, and the panels and pointing section of ``eval.explain`` / ``retrieve.py --explain`` on a
trained run."""
import json
import shutil

import pytest
import torch
from PIL import Image

import retrieve
from datasets.tokenization import build_tokenizer, encode
from engine.evaluation_run import run_evaluation
from engine.explain import Explanation, explained_queries, is_content_word
from engine.gradcam import (
    attention_gradcam,
    caption_words,
    default_layer,
    itm_gradcam,
    kept_cross_attention,
    merge_word_pieces,
    upsample,
)
from models.cada_backbone import CADABackbone
from models.registry import get_model_spec
from utils.vocab import ENC_ID

FORCED_PATCH = 5


def test_gradcam_formula_on_hand_numbers():
    """cam = mean_h max(0, ∂y/∂A · A) without the image [CLS] column; y = Σ w·A makes ∂y/∂A = w."""
    probabilities = torch.tensor([[[[0.1, 0.6, 0.3]], [[0.2, 0.2, 0.6]]]], requires_grad=True)  # (1, 2 heads, 1, 3)
    weights = torch.tensor([[[[5.0, 2.0, -1.0]], [[5.0, -4.0, 3.0]]]])
    score = (weights * probabilities).sum(dim=(1, 2, 3))  # (1,)
    cam = attention_gradcam(score, probabilities)  # (1, 1, 2)
    expected = torch.tensor([[[(2 * 0.6 + 0.0) / 2, (0.0 + 3 * 0.6) / 2]]])
    assert torch.allclose(cam, expected)


def test_default_layer_is_two_thirds_up():
    assert default_layer(12) == 8  # ALBEF's block_num for its 12-layer text encoder
    assert default_layer(4) == 2


def forced_backbone(patch: int) -> tuple[CADABackbone, torch.Tensor, int]:
    """cada_tiny whose default Grad-CAM layer attends from every text position and head to image token
    1 + ``patch`` only, with zero values on every other image token; and image tokens that make it so."""
    torch.manual_seed(0)
    spec = get_model_spec("cada_tiny")
    model = CADABackbone(spec, (128, 64)).eval()
    layer = default_layer(spec.text_layers)
    attention = model.text_encoder.encoder.layer[layer].crossattention.self
    with torch.no_grad():
        attention.query.weight.zero_()
        attention.query.bias.fill_(1.0)  # every query is all ones
        attention.key.weight.zero_()
        attention.key.weight[:, 0] = 1.0  # key = x[0] · ones: only a token with x[0] > 0 scores
        attention.key.bias.zero_()
        attention.value.bias.zero_()  # value = W_v x: zero for zero tokens
    image_embeds = torch.zeros(1, 1 + 32, spec.vision_width)  # (1, 1+N, Dv) for 128x64 / 16
    image_embeds[0, 1 + patch] = torch.randn(spec.vision_width).abs() + 1.0
    image_embeds[0, 1 + patch, 0] = 50.0
    return model, image_embeds, layer


def test_forced_cross_attention_peaks_on_its_patch():
    model, image_embeds, layer = forced_backbone(FORCED_PATCH)
    tokenizer = build_tokenizer()
    ids, mask = encode(tokenizer, ["a woman in a red coat with a black backpack"], 20)
    ids[:, 0] = ENC_ID
    cams, logit = itm_gradcam(model, image_embeds, ids, mask, layer)  # (1, L, 32)
    with torch.no_grad():
        plain = model.itm_logits(model.fuse(ids, mask, image_embeds))[:, 1]
    assert torch.allclose(logit, plain, atol=1e-5)  # the explicit attention computes what SDPA computes
    real = cams[0, mask[0].bool()]  # (real tokens, 32)
    lit = real.amax(dim=1) > 0
    assert lit.sum() >= 3  # most tokens have evidence here ...
    assert (real[lit].argmax(dim=1) == FORCED_PATCH).all()  # ... and all of it is on the forced patch
    assert (real[:, torch.arange(32) != FORCED_PATCH] == 0).all()


def test_a_token_without_gradient_gets_an_empty_map():
    """In the last layer only the first position reaches the match logit: every other row is empty."""
    model, image_embeds, _ = forced_backbone(FORCED_PATCH)
    ids, mask = encode(build_tokenizer(), ["a man in blue shorts"], 12)
    ids[:, 0] = ENC_ID
    cams, _ = itm_gradcam(model, image_embeds, ids, mask, layer=model.spec.text_layers - 1)
    assert (cams[0, 1:] == 0).all()
    assert cams[0, 0].sum() > 0


def test_probabilities_are_kept_only_while_explaining():
    model, image_embeds, layer = forced_backbone(0)
    attention = model.text_encoder.encoder.layer[layer].crossattention.self
    ids, mask = encode(build_tokenizer(), ["a man"], 8)
    with kept_cross_attention(model.text_encoder, layer):
        model.fuse(ids, mask, image_embeds)
        assert attention.probabilities.shape == (1, model.spec.text_heads, 8, 33)
    assert not attention.keep_probabilities and attention.probabilities is None
    model.fuse(ids, mask, image_embeds)  # the default path keeps nothing
    assert attention.probabilities is None
    with pytest.raises(ValueError, match="layers 0..3"):
        with kept_cross_attention(model.text_encoder, 4):
            pass


def test_word_pieces_merge_into_space_separated_words():
    tokenizer = build_tokenizer()
    text = "a t-shirt, rucksack"
    ids, _ = encode(tokenizer, [text], 12)
    words, token_words = caption_words(tokenizer, text, 12)
    pieces = [tokenizer.id_to_token(int(i)) for i in ids[0]]
    assert words == ["a", "t-shirt,", "rucksack"]
    assert pieces[:10] == ["[CLS]", "a", "t", "-", "shirt", ",", "ru", "##cks", "##ack", "[SEP]"]
    assert token_words.tolist() == [-1, 0, 1, 1, 1, 1, 2, 2, 2, -1, -1, -1]
    token_maps = torch.arange(12, dtype=torch.float)[:, None, None].expand(12, 2, 1)  # token t's map is t everywhere
    merged = merge_word_pieces(token_maps, token_words, len(words))  # sums of the pieces' maps
    assert merged[:, 0, 0].tolist() == [1.0, 2 + 3 + 4 + 5, 6 + 7 + 8]


def test_shares_add_up_to_one_and_content_words_skip_stop_words():
    maps = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[2.0, 1.0]]])  # (3 words, 1, 2)
    explanation = Explanation(["a", "hat,", "red"], maps, 0.0, [1, 2])
    assert explanation.shares().tolist() == [0.25, 0.0, 0.75]
    assert [is_content_word(w) for w in ["a", "hat,", "red", "his", "-"]] == [False, True, True, False, False]
    assert upsample(maps, (4, 8)).shape == (3, 4, 8)


def test_explained_queries_spread_over_the_split():
    assert explained_queries(10, 4) == [0, 2, 5, 7]
    assert explained_queries(3, 5) == [0, 1, 2]


@pytest.mark.slow
def test_eval_explain_draws_panels_and_scores_pointing(trained_run, tmp_path):
    checkpoint = tmp_path / "best.pth"
    shutil.copy(trained_run.checkpoint, checkpoint)
    run_evaluation(str(checkpoint), None, ["eval.explain=6", f"data.root={trained_run.data_root}"])
    folder = tmp_path / "eval_best_test"
    panels = sorted((folder / "visualize").glob("explain_q*.png"))
    assert len(panels) == 6
    with Image.open(panels[0]) as panel:
        assert panel.width > 2 * 64 and panel.height > 2 * 128  # the photo and at least one overlay, two rows
    pointing = json.loads((folder / "results.json").read_text())["pointing"]
    assert pointing["words"] == sum(part["words"] for part in pointing["parts"].values()) > 0
    assert set(pointing["parts"]) <= {"upper", "lower", "shoes", "bag", "hat", "hair"}
    for summary in [pointing, *pointing["parts"].values()]:
        assert 0 <= summary["hit_rate"] <= 100 and 0 < summary["baseline"] < 100


@pytest.mark.slow
def test_retrieve_explain_writes_one_png_per_query(trained_run, tmp_path):
    gallery = tmp_path / "photos"
    gallery.mkdir()
    for path in sorted((trained_run.data_root / "synthetic-pedes" / "imgs" / "test").glob("*.jpg"))[:6]:
        shutil.copy(path, gallery / path.name)
    retrieve.main(["--checkpoint", str(trained_run.checkpoint), "--gallery", str(gallery),
                   "--query", "a man in a red shirt", "--query", "a woman with a black bag", "--topk", "3",
                   "--out", str(tmp_path / "grid.png"), "--explain", "2", "--device", "cpu", "--workers", "0"])
    written = sorted(tmp_path.glob("grid_explain_*.png"))
    assert [path.name for path in written] == ["grid_explain_1.png", "grid_explain_2.png"]
    with Image.open(written[0]) as page:
        assert page.height > 2 * 128  # two result panels stacked
