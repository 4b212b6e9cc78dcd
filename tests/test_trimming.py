"""Trimming captions to the batch's longest: the helper, and trimmed passes equal untrimmed ones."""
import pytest
import torch

from models.cada_backbone import CADABackbone
from models.padding import longest_caption, trim_to_longest
from models.registry import get_model_spec
from utils.vocab import ENC_ID

SIZE = (32, 16)
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


def training_batch(seed=0):
    from benchmarks.common import prepare_text, train_batch  # the benchmark's batch maker
    from datasets.attributes import build_tagger
    from datasets.tokenization import build_tokenizer
    captions = ["a man in a red coat and blue jeans", "a woman with long black hair, a white shirt and a bag",
                "a boy in green", "a person wearing a grey hoodie, black trousers, white shoes and a cap"]
    text = prepare_text(captions, build_tokenizer(), build_tagger("lexicon"), torch.Generator().manual_seed(seed))
    assert (text["ara_labels"] != -100).any() and text["attention_mask"].sum(1).max() < 30
    return train_batch(text, SIZE)


def losses_and_grads(model, batch, loss_fn=None):
    model.zero_grad(set_to_none=True)
    losses = (model if loss_fn is None else loss_fn)(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same(first, second):
    (losses, grads), (expected_losses, expected_grads) = first, second
    assert losses.keys() == expected_losses.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], expected_losses[name], atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("loss_setting", ["reference", "adaptive", "itm_only", "mask_padding"])
def test_trimmed_training_losses_and_gradients_equal_untrimmed(loss_setting, monkeypatch):
    import models.cada as cada_module
    from utils.config_schema import LossConfig
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
    from benchmarks.train_step import baseline_losses
    from models.cada import CADA
    torch.manual_seed(0)
    model = CADA(get_model_spec("cada_tiny"), SIZE).eval()
    batch = training_batch(1)
    assert_same(losses_and_grads(model, batch), losses_and_grads(model, batch, lambda b: baseline_losses(model, b)))


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


def test_first_token_only_pass_under_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    spec = get_model_spec("cada_tiny")
    plain, recomputed = (CADABackbone(spec, SIZE, grad_checkpointing=flag).train() for flag in (False, True))
    recomputed.load_state_dict(plain.state_dict())
    ids, mask = padded_captions()
    grads = []
    for model in (plain, recomputed):
        model.zero_grad()
        model.project_text(model.encode_text(ids, mask, first_token_only=True)).square().sum().backward()
        grads.append(model.text_encoder.encoder.layer[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0
