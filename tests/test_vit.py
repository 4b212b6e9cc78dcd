"""Image encoder: rectangular inputs, BLIP key names, checkpointing, position-table resizing."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from models.vit import ImageEncoder, interpolate_pos_embed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BLIP_KEYS = FIXTURES / "blip_model_base_keys.json"


def _tiny_encoder(image_size=(32, 16), grad_checkpointing=False) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(image_size, patch_size=8, width=32, depth=2, heads=2, grad_checkpointing=grad_checkpointing)


def test_rectangular_images_give_all_tokens_after_final_norm():
    encoder = _tiny_encoder((32, 16)).eval()
    captured = {}
    encoder.norm.register_forward_hook(lambda module, inputs, output: captured.update(before_norm=inputs[0]))
    tokens = encoder(torch.randn(2, 3, 32, 16))
    assert tokens.shape == (2, 1 + (32 // 8) * (16 // 8), 32)
    assert encoder.grid_size == (4, 2)
    # Every token, [CLS] included, is the final LayerNorm of the last block's output.
    assert captured["before_norm"].shape == tokens.shape
    torch.testing.assert_close(tokens, F.layer_norm(captured["before_norm"], (32,), encoder.norm.weight,
                                                    encoder.norm.bias, eps=1e-6))


def test_image_size_not_divisible_by_patch_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ImageEncoder((30, 16), patch_size=8, width=32, depth=1, heads=2)


def test_vit_b_state_dict_equals_blip_visual_encoder_keys():
    expected = {key.removeprefix("visual_encoder."): shape for key, shape in json.loads(BLIP_KEYS.read_text()).items()
                if key.startswith("visual_encoder.")}
    with torch.device("meta"):
        encoder = ImageEncoder((224, 224), patch_size=16, width=768, depth=12, heads=12)
    assert {key: list(value.shape) for key, value in encoder.state_dict().items()} == expected
    assert all(module.eps == 1e-6 for module in encoder.modules() if isinstance(module, torch.nn.LayerNorm))


def test_grad_checkpointing_recomputes_blocks_and_gives_the_same_gradients(monkeypatch):
    images = torch.randn(2, 3, 32, 16)
    block_calls = []
    plain_forward = Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, x, **kwargs: block_calls.append(1) or plain_forward(self, x))
    grads, calls = [], []
    for checkpointing in (False, True):
        block_calls.clear()
        encoder = _tiny_encoder(grad_checkpointing=checkpointing).train()
        encoder(images).square().sum().backward()
        grads.append({name: param.grad for name, param in encoder.named_parameters()})
        calls.append(len(block_calls))
    assert calls == [2, 4]  # two blocks, run again in the backward pass when checkpointing
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_interpolate_pos_embed_is_identity_on_the_same_grid():
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    assert interpolate_pos_embed(pos_embed, (14, 14)) is pos_embed


def test_interpolate_pos_embed_matches_channelwise_bicubic_and_keeps_cls():
    old_grid, new_grid, dim = (14, 14), (24, 8), 5
    pos_embed = torch.randn(1, 1 + 196, dim)
    resized = interpolate_pos_embed(pos_embed, new_grid)
    assert resized.shape == (1, 1 + 24 * 8, dim)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])
    for channel in range(dim):
        plane = pos_embed[0, 1:, channel].reshape(1, 1, *old_grid)  # (1, 1, 14, 14)
        expected = F.interpolate(plane, size=new_grid, mode="bicubic", align_corners=False).flatten()
        torch.testing.assert_close(resized[0, 1:, channel], expected)


def test_interpolate_pos_embed_respects_row_and_column_orientation():
    # Resizing a (h0, w0) grid to (h, w) must equal resizing its transpose to (w, h), transposed back.
    grid = torch.randn(6, 4, 3)  # (h0, w0, D)
    as_table = torch.cat([torch.zeros(1, 1, 3), grid.reshape(1, 24, 3)], dim=1)
    transposed = torch.cat([torch.zeros(1, 1, 3), grid.transpose(0, 1).reshape(1, 24, 3)], dim=1)
    resized = interpolate_pos_embed(as_table, (9, 5), old_grid=(6, 4))[0, 1:].reshape(9, 5, 3)
    resized_t = interpolate_pos_embed(transposed, (5, 9), old_grid=(4, 6))[0, 1:].reshape(5, 9, 3)
    torch.testing.assert_close(resized, resized_t.transpose(0, 1))


def test_interpolate_pos_embed_rejects_non_square_tables_without_a_grid():
    with pytest.raises(ValueError, match="old_grid"):
        interpolate_pos_embed(torch.randn(1, 1 + 24 * 8, 4), (14, 14))
