"""Strict, table-driven import of BLIP ``model_base.pth``, the authors' CADA checkpoints and our own.

All three are ``{'model': state_dict, ...}`` with BLIP's parameter names. A :class:`KeyMap` says what
happens to each checkpoint key: dropped by name (momentum copies, queues, temperature), renamed by
prefix, or kept; the ViT position table is resized (and the resize logged) when the checkpoint was
trained at another image size: from the grid our checkpoints' stored config gives, else a square one.
After mapping, every model key must be present except an explicit allow-list (logged), no unexpected key
may remain, every shape must match, and keys that name one tied Parameter in the model must hold equal
values; otherwise :class:`CheckpointMismatchError` names the offending keys and shapes.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.vit import interpolate_pos_embed
from utils.checkpoint import load_checkpoint
from utils.errors import CheckpointError

logger = logging.getLogger(__name__)

MAX_LISTED_KEYS = 20


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the model."""


@dataclass(frozen=True)
class KeyMap:
    """How checkpoint keys become model keys. A name covers itself and every key below it (``name.*``)."""

    dropped: tuple[str, ...]  # names discarded before matching
    renamed: tuple[tuple[str, str], ...] = ()  # (checkpoint prefix, model prefix) pairs, first match wins
    pos_embed_key: str = "visual_encoder.pos_embed"  # the ViT position table, resized to the model's grid


# BLIP pre-training state (momentum encoders, contrastive queues, temperature) has no place in CADA.
# Names are shared by BLIP, the CADA release and this project, so nothing is renamed.
BLIP_KEY_MAP = KeyMap(dropped=("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m",
                              "temp", "image_queue", "text_queue", "queue_ptr", "idx_queue"))

# CADA's new ATP head, absent from BLIP's pre-trained model.
BLIP_EXPECTED_MISSING = ("itm_local_head",)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, key by key (model names)."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)


def _covered(key: str, names: tuple[str, ...]) -> bool:
    """True when ``key`` is one of ``names`` or lies below one (a trailing dot on a name is optional)."""
    return any(key == name.rstrip(".") or key.startswith(name.rstrip(".") + ".") for name in names)


def _renamed(key: str, renamed: tuple[tuple[str, str], ...]) -> str:
    for old, new in renamed:
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _square_grid(num_patches: int) -> tuple[int, int] | None:
    side = math.isqrt(num_patches)
    return (side, side) if side * side == num_patches else None


def _resize_pos_embed(pos_embed: torch.Tensor, model_shape: torch.Size, target_grid: tuple[int, int] | None,
                      source_grid: tuple[int, int] | None) -> tuple[torch.Tensor, tuple | None]:
    """Returns (the table, (source grid, target grid) or None), resized when its shape or grid differs but
    not when the widths do (reported as a shape mismatch)."""
    if pos_embed.ndim != 3 or len(model_shape) != 3 or pos_embed.shape[2] != model_shape[2]:
        return pos_embed, None
    target_grid = tuple(target_grid) if target_grid is not None else _square_grid(model_shape[1] - 1)
    source_grid = tuple(source_grid) if source_grid is not None else _square_grid(pos_embed.shape[1] - 1)
    if pos_embed.shape == model_shape and source_grid in (None, target_grid):
        return pos_embed, None
    if target_grid is None:
        raise CheckpointMismatchError(
            f"cannot resize the position table {tuple(pos_embed.shape)} to {tuple(model_shape)}: "
            "the model's patch grid is not square and was not given")
    if source_grid is None or source_grid[0] * source_grid[1] != pos_embed.shape[1] - 1:
        raise CheckpointMismatchError(
            f"cannot resize the position table {tuple(pos_embed.shape)} to the model's {_grid(target_grid)} "
            f"patch grid: its {pos_embed.shape[1] - 1} patch rows "
            + (f"do not form the stored {_grid(source_grid)} grid" if source_grid else
               "are not a square grid and the checkpoint stores no image size") + "; pass source_grid")
    return interpolate_pos_embed(pos_embed, target_grid, source_grid), (source_grid, target_grid)


def _grid(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


def stored_patch_grid(checkpoint: dict, key_map: KeyMap = BLIP_KEY_MAP) -> tuple[int, int] | None:
    """The patch grid one of our checkpoints was trained at: its stored ``config.model.image_size`` over the
    patch size of its patch-embedding kernel; None for files without that config (BLIP, the CADA release)."""
    config = checkpoint.get("config")
    model_config = config.get("model") if isinstance(config, dict) else None
    size = model_config.get("image_size") if isinstance(model_config, dict) else None
    state = checkpoint.get("model")
    kernel = state.get(key_map.pos_embed_key.rpartition(".")[0] + ".patch_embed.proj.weight") \
        if isinstance(state, dict) else None
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not isinstance(kernel, torch.Tensor) \
            or kernel.ndim != 4:
        return None
    patch_h, patch_w = kernel.shape[-2:]
    return int(size[0]) // patch_h, int(size[1]) // patch_w


def remap_state_dict(state_dict: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor],
                     target_grid: tuple[int, int] | None = None, source_grid: tuple[int, int] | None = None,
                     key_map: KeyMap = BLIP_KEY_MAP) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Applies ``key_map`` (no completeness check); returns (tensors by model key, dropped checkpoint keys).

    Args:
        model_state: the model's ``state_dict()`` (only shapes are read).
        target_grid: the model's ViT patch grid (H/p, W/p); None infers a square one.
        source_grid: the checkpoint's patch grid; None infers a square one (BLIP's 14x14).
    """
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if _covered(key, key_map.dropped):
            dropped.append(key)
            continue
        new_key = _renamed(key, key_map.renamed)
        if new_key in mapped:
            raise CheckpointMismatchError(f"checkpoint key {key!r} maps onto {new_key!r}, which is already taken")
        mapped[new_key] = value
    pos_key = key_map.pos_embed_key
    if pos_key in mapped and pos_key in model_state:
        mapped[pos_key], resized = _resize_pos_embed(mapped[pos_key], model_state[pos_key].shape, target_grid,
                                                     source_grid)
        if resized:
            logger.info("%s resized from the checkpoint's %s patch grid to the model's %s (bicubic): the "
                        "checkpoint was trained at another image size", pos_key, *map(_grid, resized))
    return mapped, dropped


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED_KEYS]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in shown) + more


def _check_tied_values(model: nn.Module, mapped: dict[str, torch.Tensor], source: str) -> None:
    """Keys naming one shared Parameter must carry equal values, or loading would silently keep one."""
    keys_by_tensor: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        keys_by_tensor.setdefault(id(tensor), []).append(key)
    for keys in keys_by_tensor.values():
        present = [key for key in keys if key in mapped]
        for key in present[1:]:
            if not torch.equal(mapped[present[0]], mapped[key]):
                raise CheckpointMismatchError(
                    f"{source}: {present[0]!r} and {key!r} are one tied parameter in the model "
                    "but hold different values in the checkpoint")


def load_pretrained(model: nn.Module, path: str | Path, allow_missing: tuple[str, ...] = BLIP_EXPECTED_MISSING,
                    source_grid: tuple[int, int] | None = None, key_map: KeyMap = BLIP_KEY_MAP,
                    checkpoint: dict | None = None) -> LoadReport:
    """Loads a ``{'model': state_dict, ...}`` checkpoint into ``model`` strictly.

    Args:
        model: a module whose keys are BLIP's (e.g. :class:`models.cada_backbone.CADABackbone`). Its
            ``visual_encoder.grid_size`` sets the grid the position table is resized to.
        path: the ``.pth`` file (BLIP ``model_base.pth``, a CADA release checkpoint, or ours).
        allow_missing: model names (keys or module prefixes) that may be absent; they keep their
            initial values and are logged. Extend it for heads that are new in this project.
        source_grid: the checkpoint's patch grid; None takes it from our checkpoints' stored config, else
            assumes a square one (BLIP's and the CADA release's 14x14).
        checkpoint: the file's content when the caller has already read it (each file is read once).

    Raises:
        utils.errors.CheckpointError: the file is missing, empty, truncated or not a weights-only torch file.
        CheckpointMismatchError: no ``'model'`` entry, or missing (not allowed), unexpected or
            mis-shaped keys, or tied keys with different values.
    """
    path = Path(path)
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint)[:MAX_LISTED_KEYS] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointMismatchError(
            f"{path}: expected a dict with the state dict under 'model' (BLIP/CADA/this project's format), "
            f"found {found}")
    model_state = model.state_dict()
    pos_module = key_map.pos_embed_key.rpartition(".")[0]
    target_grid = getattr(model.get_submodule(pos_module), "grid_size", None) if pos_module else None
    if source_grid is None:
        source_grid = stored_patch_grid(checkpoint, key_map)
    try:
        mapped, dropped = remap_state_dict(checkpoint["model"], model_state, target_grid, source_grid, key_map)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{path}: {error}") from None

    missing = [key for key in model_state if key not in mapped]
    not_allowed = [key for key in missing if not _covered(key, allow_missing)]
    unexpected = [key for key in mapped if key not in model_state]
    mismatched = [f"{key}: checkpoint {tuple(mapped[key].shape)} vs model {tuple(model_state[key].shape)}"
                  for key in mapped if key in model_state and mapped[key].shape != model_state[key].shape]
    if not_allowed or unexpected or mismatched:
        problems = [_listing(title, items) for title, items in
                    (("missing", not_allowed), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
        raise CheckpointMismatchError(f"{path} does not fit {type(model).__name__}:\n" + "\n".join(problems))
    _check_tied_values(model, mapped, str(path))

    model.load_state_dict({**{key: model_state[key] for key in missing}, **mapped}, strict=True)
    if missing:
        logger.info("%s: %d allow-listed keys not in the checkpoint keep their initial values: %s",
                    path, len(missing), ", ".join(missing))
    logger.info("%s: loaded %d tensors, dropped %d by name", path, len(mapped), len(dropped))
    return LoadReport(loaded=list(mapped), dropped=dropped, allowed_missing=missing)
