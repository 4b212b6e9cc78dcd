"""MED BERT: text vs multimodal mode, padding invariance, causality, attention math, tied MLM head."""
import math

import pytest
import torch

from models.med_bert import MedBert, MedLayer, MultiHeadAttention, TextDecoder
from utils.vocab import PAD_ID

VOCAB, WIDTH, HEADS, FFN, IMAGE_WIDTH = 50, 32, 4, 64, 48


def _bert(dropout=0.0, grad_checkpointing=False) -> MedBert:
    torch.manual_seed(0)
    return MedBert(VOCAB, WIDTH, num_layers=2, heads=HEADS, ffn=FFN, image_width=IMAGE_WIDTH, max_positions=16,
                   dropout=dropout, grad_checkpointing=grad_checkpointing)


def _decoder(causal=True) -> TextDecoder:
    torch.manual_seed(0)
    return TextDecoder(VOCAB, WIDTH, num_layers=2, heads=HEADS, ffn=FFN, image_width=IMAGE_WIDTH, max_positions=16,
                       dropout=0.0, causal=causal)


def _batch(length=7):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    image = torch.randn(2, 5, IMAGE_WIDTH, generator=generator)
    return ids, mask, image


def test_text_mode_ignores_cross_attention_and_multimodal_mode_uses_it():
    bert = _bert().eval()
    ids, mask, image = _batch()
    text_before, fused_before = bert(ids, mask), bert(ids, mask, image_embeds=image)
    with torch.no_grad():
        for name, param in bert.named_parameters():
            if ".crossattention." in name:
                param.add_(torch.randn_like(param))
    torch.testing.assert_close(bert(ids, mask), text_before, rtol=0, atol=0)
    assert not torch.allclose(bert(ids, mask, image_embeds=image), fused_before, atol=1e-3)
    assert fused_before.shape == (2, 7, WIDTH)


@pytest.mark.parametrize("mode", ["text", "multimodal", "causal"])
def test_appended_padding_does_not_change_real_token_outputs(mode):
    bert = _bert().eval()
    ids, mask, image = _batch()
    padded_ids = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    kwargs = {"image_embeds": image} if mode != "text" else {}
    causal = mode == "causal"
    short = bert(ids, mask, causal=causal, **kwargs)
    long = bert(padded_ids, padded_mask, causal=causal, **kwargs)
    real = mask.bool()
    torch.testing.assert_close(long[:, :7][real], short[real], atol=1e-5, rtol=1e-5)


def test_image_mask_hides_masked_image_tokens():
    bert = _bert().eval()
    ids, mask, image = _batch()
    image_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = image.clone()
    changed[0, 3:] += 5.0
    out = bert(ids, mask, image_embeds=image, image_mask=image_mask)
    out_changed = bert(ids, mask, image_embeds=changed, image_mask=image_mask)
    torch.testing.assert_close(out_changed, out)


def test_causal_decoder_position_depends_only_on_earlier_tokens():
    decoder = _decoder(causal=True).eval()
    ids, mask, image = _batch()
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] % (VOCAB - 1)) + 1  # a different real token at position 4
    logits, logits_changed = decoder(ids, mask, image), decoder(changed, mask, image)
    assert logits.shape == (2, 7, VOCAB)
    torch.testing.assert_close(logits_changed[:, :4], logits[:, :4], rtol=0, atol=0)
    assert not torch.allclose(logits_changed[0, 4:], logits[0, 4:], atol=1e-4)


def test_bidirectional_decoder_sees_later_tokens():
    decoder = _decoder(causal=False).eval()
    ids, mask, image = _batch()
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] % (VOCAB - 1)) + 1
    assert not torch.allclose(decoder(changed, mask, image)[:, :4], decoder(ids, mask, image)[:, :4], atol=1e-4)


def test_sdpa_attention_equals_hand_written_softmax_reference():
    torch.manual_seed(0)
    heads, width, context_width = 2, 8, 6
    attention = MultiHeadAttention(width, heads, context_width, dropout=0.0).eval()
    hidden, context = torch.randn(2, 3, width), torch.randn(2, 4, context_width)
    keep = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    out = attention(hidden, context, keep)

    head_dim = width // heads
    expected = torch.empty(2, 3, width)
    for b in range(2):
        for h in range(heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q = hidden[b] @ attention.query.weight[cols].T + attention.query.bias[cols]  # (3, d)
            k = context[b] @ attention.key.weight[cols].T + attention.key.bias[cols]  # (4, d)
            v = context[b] @ attention.value.weight[cols].T + attention.value.bias[cols]  # (4, d)
            scores = (q @ k.T) / math.sqrt(head_dim)
            scores = scores.masked_fill(~keep[b, 0, 0], float("-inf"))
            expected[b, :, cols] = scores.softmax(-1) @ v
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_mlm_head_is_tied_to_the_word_embeddings_and_lists_both_keys():
    decoder = _decoder()
    predictions = decoder.cls.predictions
    assert predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight
    assert predictions.decoder.bias is predictions.bias
    keys = list(decoder.state_dict())
    assert keys[-7:] == ["cls.predictions.bias", "cls.predictions.transform.dense.weight",
                         "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                         "cls.predictions.transform.LayerNorm.bias", "cls.predictions.decoder.weight",
                         "cls.predictions.decoder.bias"]
    assert decoder.bert.embeddings.position_ids.tolist() == [list(range(16))]


def test_pad_row_of_the_word_table_gets_no_gradient_from_lookups_but_the_tied_projection_trains_it():
    """As in the authors' BERT stacks (``padding_idx=0``): padded positions are looked up, and they feed
    the states (reference ATP averages them), but the lookup never trains the [PAD] row."""
    ids, mask, image = _batch()
    assert (ids == PAD_ID).any()
    bert = _bert().train()
    bert(ids, mask, image_embeds=image).square().sum().backward()
    lookup_grad = bert.embeddings.word_embeddings.weight.grad  # (V, D)
    assert torch.count_nonzero(lookup_grad[PAD_ID]) == 0
    assert (lookup_grad[ids[ids != PAD_ID]].abs().sum(dim=1) > 0).all()
    decoder = _decoder().train()
    logits = decoder(ids, mask, image)  # (2, 7, V): the projection is the word table itself
    logits[:, :, PAD_ID].sum().backward()
    assert decoder.bert.embeddings.word_embeddings.weight.grad[PAD_ID].abs().sum() > 0


def test_decoder_forward_backward_gives_finite_gradients_for_every_parameter():
    decoder = _decoder().train()
    ids, mask, image = _batch()
    logits = decoder(ids, mask, image)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), ignore_index=0).backward()
    for name, param in decoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # with dropout: the recomputation replays the same masks
def test_gradient_checkpointing_recomputes_layers_and_matches_plain_backward(monkeypatch, dropout):
    ids, mask, image = _batch()
    layer_calls = []
    plain_forward = MedLayer.forward
    monkeypatch.setattr(MedLayer, "forward", lambda self, *args: layer_calls.append(1) or plain_forward(self, *args))
    grads, calls = [], []
    for checkpointing in (False, True):
        layer_calls.clear()
        bert = _bert(dropout, grad_checkpointing=checkpointing).train()
        torch.manual_seed(5)
        bert(ids, mask, image_embeds=image).square().sum().backward()
        grads.append({name: param.grad for name, param in bert.named_parameters()})
        calls.append(len(layer_calls))
    assert calls == [2, 4]  # two layers, run again in the backward pass when checkpointing
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_text_longer_than_the_position_table_is_rejected():
    with pytest.raises(ValueError, match="16 position"):
        _bert()(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.long))


def test_shared_images_by_index_equal_repeated_images():
    bert = _bert().eval()
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(1, VOCAB, (5, 6), generator=generator)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[2, 3:] = 0
    distinct = torch.randn(3, 5, IMAGE_WIDTH, generator=generator)
    image_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 1]])
    index = torch.tensor([2, 0, 2, 1, 0])
    shared = bert(ids, mask, image_embeds=distinct, image_mask=image_mask, image_index=index)
    repeated = bert(ids, mask, image_embeds=distinct[index], image_mask=image_mask[index])
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-5)
