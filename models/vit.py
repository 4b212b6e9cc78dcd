"""BLIP's image encoder: a plain timm ViT (class token, pre-LN, final LayerNorm) that returns every token.

Parameter names are timm's and equal BLIP's ``visual_encoder.*`` names one to one; nothing beyond
``cls_token``, ``pos_embed``, ``patch_embed``, ``blocks`` and ``norm`` carries state (no head, no
``fc_norm``). Images may be rectangular; :func:`interpolate_pos_embed` resizes a pretrained position
grid to the model's.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ImageEncoder(VisionTransformer):
    """ViT whose forward returns all tokens after the final norm, (B, 1 + N, D), N = (H/p)(W/p), for images of
    ``image_size`` (H, W), both divisible by ``patch_size``; the MLP hidden width is ``4 * width``."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, width: int, depth: int, heads: int,
                 grad_checkpointing: bool = False) -> None:
        image_size = tuple(image_size)
        if len(image_size) != 2 or image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(f"image size {image_size} must be (H, W), both divisible by the patch size {patch_size}")
        super().__init__(
            img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
            mlp_ratio=4.0, qkv_bias=True, class_token=True, num_classes=0, global_pool="",
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.set_grad_checkpointing(grad_checkpointing)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid (H/p, W/p)."""
        return tuple(self.patch_embed.grid_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encodes images (B, 3, H, W) to tokens (B, 1 + N, D), [CLS] first."""
        return self.forward_features(images)


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                          old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resizes a ViT position table to another patch grid (bicubic), keeping the [CLS] row: a (1, 1 + h * w, D)
    table in the input's dtype, or the input itself when the grid is unchanged.

    Args:
        pos_embed: (1, 1 + h0 * w0, D) table, [CLS] row first, patches row-major.
        new_grid: target grid (h, w).
        old_grid: source grid (h0, w0); ``None`` means square (h0 = w0 = sqrt of the patch count).
    """
    num_patches = pos_embed.shape[1] - 1
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"position table has {num_patches} patch rows, not a square grid; pass old_grid")
        old_grid = (side, side)
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"position table has {num_patches} patch rows, which does not fit the grid {old_grid}")
    if old_grid == new_grid:
        return pos_embed
    cls_row, patch_rows = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    grid = patch_rows.reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()  # (1, D, h0, w0)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)  # (1, D, h, w)
    patch_rows = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([cls_row, patch_rows], dim=1)
