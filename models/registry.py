"""Named model sizes: ``MODELS[name]`` is the :class:`ModelSpec` a backbone is built from.

``cada_base`` is BLIP-base (ViT-B/16 + BERT-base MED), the architecture of BLIP's ``model_base.pth``
and of the authors' CADA checkpoints; ``cada_large`` pairs ViT-L/16 with the same BERT-base text side
(BLIP-large); ``cada_tiny`` is a randomly initialised toy for CPU tests and demos.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.vocab import VOCAB_SIZE


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of every module in :class:`models.cada_backbone.CADABackbone`."""

    vision_patch: int  # ViT patch side in pixels
    vision_width: int  # ViT token width; the MLP hidden width is 4x
    vision_depth: int
    vision_heads: int
    text_width: int  # MED BERT hidden width (encoder and decoder)
    text_layers: int  # encoder layers
    text_heads: int
    text_ffn: int  # feed-forward hidden width
    decoder_layers: int  # layers of the separate text decoder stack (ARA)
    max_positions: int = 512  # absolute text positions
    vocab_size: int = VOCAB_SIZE  # WordPiece vocabulary incl. [DEC] and [ENC]
    dropout: float = 0.1  # BERT hidden and attention-probability dropout
    embed_dim: int = 256  # width of the shared image/text retrieval space


MODELS: dict[str, ModelSpec] = {
    "cada_tiny": ModelSpec(vision_patch=16, vision_width=192, vision_depth=4, vision_heads=3,
                           text_width=128, text_layers=4, text_heads=4, text_ffn=512, decoder_layers=2, dropout=0.0),
    "cada_base": ModelSpec(vision_patch=16, vision_width=768, vision_depth=12, vision_heads=12,
                           text_width=768, text_layers=12, text_heads=12, text_ffn=3072, decoder_layers=12),
    "cada_large": ModelSpec(vision_patch=16, vision_width=1024, vision_depth=24, vision_heads=16,
                            text_width=768, text_layers=12, text_heads=12, text_ffn=3072, decoder_layers=12),
}


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; a KeyError for an unknown name lists the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
