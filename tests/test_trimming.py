"""Trimming captions to the batch's longest: the helper, and trimmed passes equal untrimmed ones."""
import pytest
import torch

import models.cada as cada_module
from models.cada_backbone import CADABackbone
from models.padding import longest_caption, trim_to_longest
from models.registry import get_model_spec
from tests.helpers import SIZE, assert_same, authors_way_losses, losses_and_grads, training_batch
from utils.config_schema import LossConfig
from utils.vocab import ENC_ID

LENGTHS = (5, 12, 3, 9)  # real tokens per caption; padded to 73 like real data


def padded_captions(lengths=LENGTHS, total=73, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), total, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1000, 2000, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def test_longest_caption_and_trim_keep_every_real_token():
    ids, mask = padded_captions()
    assert longest_caption(mask) == 12
    labels = torch.arange(4 * 73).view(4, 73)
    short_ids, short_mask, short_labels = trim_to_longest(ids, mask, labels)
    assert short_ids.shape == short_mask.shape == short_labels.shape == (4, 12)
    assert short_mask.sum() == mask.sum() and torch.equal(short_labels, labels[:, :12])
    assert trim_to_longest(ids, mask, length=20)[0].shape == (4, 20)
    full = torch.ones(2, 7, dtype=torch.long)
    assert trim_to_longest(full, full)[0] is full  # nothing to cut: the same tensor
    assert longest_caption(torch.zeros(3, 5)) == 1  # keeps position 0 even with no real token
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        longest_caption(torch.ones(3))


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CADABackbone(get_model_spec("cada_tiny"), SIZE).eval()


@torch.no_grad()
def test_trimmed_text_and_fused_first_token_and_decoder_states_equal_untrimmed(backbone):
    ids, mask = padded_captions()
    short_ids, short_mask = trim_to_longest(ids, mask)
    image_embeds = backbone.encode_image(torch.randn(4, 3, *SIZE))
    torch.testing.assert_close(backbone.text_features(backbone.encode_text(short_ids, short_mask)),
                               backbone.text_features(backbone.encode_text(ids, mask)), atol=1e-5, rtol=1e-5)
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    untrimmed_itm = backbone.itm_head(backbone.fuse(enc_ids, mask, image_embeds)[:, 0])[:, 1]
    torch.testing.assert_close(backbone.itm_match_logit(enc_ids, mask, image_embeds), untrimmed_itm,
                               atol=1e-5, rtol=1e-5)
    real = short_mask.bool()
    torch.testing.assert_close(backbone.decoder_hidden(short_ids, short_mask, image_embeds)[real],
                               backbone.decoder_hidden(ids, mask, image_embeds)[:, :12][real], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_setting", ["reference", "adaptive", "itm_only", "mask_padding"])
def test_trimmed_training_losses_and_gradients_equal_untrimmed(loss_setting, monkeypatch):
    objective = LossConfig()
    if loss_setting == "adaptive":
        objective.atp.mode = "adaptive"
    elif loss_setting == "itm_only":
        objective.atp.weight = objective.ara.weight = objective.global_.weight = 0.0
    elif loss_setting == "mask_padding":
        objective.atp.mask_padding = True
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=objective).eval()  # eval: no dropout
    assert model.fused_pass_trimmable() == (loss_setting in ("adaptive", "itm_only"))
    batch = training_batch()
    trimmed = losses_and_grads(model, batch)
    monkeypatch.setattr(cada_module, "trim_to_longest", lambda *tensors, length=None: tensors)
    assert_same(trimmed, losses_and_grads(model, batch))


@pytest.mark.slow
def test_training_losses_and_gradients_equal_the_authors_way():
    """Trimming, shared image keys/values and masked-only logits against an independent full-length version."""
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE).eval()
    batch = training_batch(1)
    assert_same(losses_and_grads(model, batch),
                losses_and_grads(model, batch, lambda b: authors_way_losses(model, b)))


@pytest.mark.slow
@pytest.mark.parametrize("atp_mode", ["reference", "adaptive"])
def test_multi_process_layout_equals_single_process(atp_mode, monkeypatch):
    """The world > 1 branch (local images, then the gathered negatives, as distinct cross-attention contexts;
    the fused pass trimmed to the longest of its own texts) gives the single-process losses and gradients."""
    objective = LossConfig()
    objective.atp.mode = atp_mode
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective=objective).eval()
    batch = training_batch()
    single = losses_and_grads(model, batch)
    monkeypatch.setattr(cada_module, "get_world_size", lambda: 2)  # gathers stay identities without a group
    assert_same(losses_and_grads(model, batch), single)


@torch.no_grad()
def test_first_token_only_pass_equals_the_first_row_of_the_full_pass(backbone):
    ids, mask = padded_captions()
    image_embeds = backbone.encode_image(torch.randn(2, 3, *SIZE))
    image_index = torch.tensor([1, 0, 1, 1])  # shared images, as in re-ranking
    full_text = backbone.encode_text(ids, mask)
    first_text = backbone.encode_text(ids, mask, first_token_only=True)
    assert first_text.shape == (4, 1, full_text.shape[2])
    torch.testing.assert_close(first_text, full_text[:, :1], atol=1e-5, rtol=1e-5)
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_ID
    full_fused = backbone.fuse(enc_ids, mask, image_embeds, image_index=image_index)
    first_fused = backbone.fuse(enc_ids, mask, image_embeds, image_index=image_index, first_token_only=True)
    torch.testing.assert_close(first_fused, full_fused[:, :1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first_fused, full_text[:, :1], atol=1e-3)  # the images did enter
    with pytest.raises(ValueError, match="first_token_only"):
        backbone.text_encoder(ids, mask, causal=True, first_token_only=True)


def test_ara_positions_found_on_the_host_give_the_same_loss_and_gradients():
    """The trainer passes where the masked words are (found on the host copy of the batch), so the decoder's
    vocabulary projection gathers them without a device read-back; the loss must not change."""
    objective = LossConfig()
    objective.global_.weight = objective.itm.weight = objective.atp.weight = 0.0
    torch.manual_seed(0)
    model = cada_module.CADA(get_model_spec("cada_tiny"), SIZE, objective).eval()
    batch = training_batch()
    masked = (batch["ara_labels"] != -100).nonzero().t()  # (2, M), as engine/trainer.py builds it
    assert masked.shape[1] == (batch["ara_labels"] != -100).sum()
    assert_same(losses_and_grads(model, {**batch, "ara_positions": masked}), losses_and_grads(model, batch))
