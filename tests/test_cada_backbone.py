"""CADABackbone: shapes and semantics of the encode/project/fuse/decode methods; registry lookups."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from models.cada_backbone import CADABackbone
from models.registry import MODELS, get_model_spec

# Image and text widths differ on purpose, as in cada_large (ViT-L 1024 -> text 768).
SPEC = replace(get_model_spec("cada_tiny"), vision_patch=8,
               vision_width=24, vision_heads=2, vision_depth=2, text_width=16,
               text_heads=2, text_ffn=32, text_layers=2, decoder_layers=1, vocab_size=40, max_positions=8,
               embed_dim=12, dropout=0.0)
IMAGE_SIZE = (16, 8)  # patch 8 -> a 2x1 grid, 3 tokens


def _model(**kwargs) -> CADABackbone:
    torch.manual_seed(0)
    return CADABackbone(SPEC, IMAGE_SIZE, **kwargs)


def _inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, *IMAGE_SIZE, generator=generator)
    ids = torch.randint(1, 40, (3, 6), generator=generator)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])
    return images, ids * mask, mask


def test_methods_return_documented_shapes_and_normalised_features():
    model = _model().eval()
    images, ids, mask = _inputs()
    image_embeds = model.encode_image(images)
    text_embeds = model.encode_text(ids, mask)
    assert image_embeds.shape == (3, 3, 24) and text_embeds.shape == (3, 6, 16)
    torch.testing.assert_close(model.image_features(image_embeds).norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(model.text_features(text_embeds),
                               F.normalize(model.text_proj(text_embeds[:, 0]), dim=-1))
    torch.testing.assert_close(model.project_image(image_embeds), model.vision_proj(image_embeds[:, 0]))
    fused = model.fuse(ids, mask, image_embeds)
    assert fused.shape == (3, 6, 16)
    torch.testing.assert_close(model.itm_match_logit(ids, mask, image_embeds), model.itm_head(fused[:, 0])[:, 1])
    torch.testing.assert_close(model.itm_logits(fused), model.itm_head(fused[:, 0]))
    logits = model.decode(ids, mask, image_embeds)
    assert logits.shape == (3, 6, 40)
    hidden = model.decoder_hidden(ids, mask, image_embeds)
    torch.testing.assert_close(model.decoder_logits(hidden[mask.bool()]), logits[mask.bool()])


def test_fuse_pairs_texts_with_their_own_images():
    model = _model().eval()
    images, ids, mask = _inputs()
    image_embeds = model.encode_image(images)
    fused = model.fuse(ids, mask, image_embeds)
    swapped = image_embeds.clone()
    swapped[2] = image_embeds[1]
    fused_swapped = model.fuse(ids, mask, swapped)
    torch.testing.assert_close(fused_swapped[:2], fused[:2])
    assert not torch.allclose(fused_swapped[2], fused[2], atol=1e-4)


def _all_losses(model: CADABackbone, images, ids, mask) -> torch.Tensor:
    image_embeds = model.encode_image(images)
    text_embeds = model.encode_text(ids, mask)
    fused = model.fuse(ids, mask, image_embeds)
    similarity = model.image_features(image_embeds) @ model.text_features(text_embeds).T
    return (F.cross_entropy(similarity, torch.arange(3)) + model.itm_logits(fused).logsumexp(-1).mean()
            + model.itm_local_head(fused[:, 1:].mean(1)).logsumexp(-1).mean()
            + F.cross_entropy(model.decode(ids, mask, image_embeds).flatten(0, 1), ids.flatten(), ignore_index=0))


def test_forward_backward_gives_finite_gradients_for_every_parameter():
    model = _model().train()
    _all_losses(model, *_inputs()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = _model(grad_checkpointing=checkpointing).train()
        _all_losses(model, *_inputs()).backward()
        grads.append({name: param.grad for name, param in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_cada_large_cross_attention_reads_the_vit_l_width():
    with torch.device("meta"):
        model = CADABackbone(get_model_spec("cada_large"), (384, 128))
    state = model.state_dict()
    assert state["visual_encoder.pos_embed"].shape == (1, 1 + 24 * 8, 1024)
    assert state["text_encoder.encoder.layer.0.crossattention.self.key.weight"].shape == (768, 1024)
    assert state["text_decoder.bert.encoder.layer.11.crossattention.self.value.weight"].shape == (768, 1024)
    assert state["vision_proj.weight"].shape == (256, 1024)
    block_norms = [key for key in state if key.startswith("visual_encoder.blocks.") and key.endswith("norm1.weight")]
    assert len(block_norms) == 24


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="cada_base, cada_large, cada_tiny"):
        get_model_spec("cada_huge")
    assert set(MODELS) == {"cada_base", "cada_large", "cada_tiny"}
