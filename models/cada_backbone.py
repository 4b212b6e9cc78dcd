"""CADA's parameter container: BLIP's encoders, decoder, projections and match heads, no losses.

The attribute names make ``state_dict()`` equal, key for key and shape for shape, the authors' CADA
checkpoint (``cada_base`` at 224x224); the loss-computing model builds on the encode/project/fuse/
decode methods here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.med_bert import MedBert, TextDecoder
from models.padding import trim_to_longest
from models.registry import ModelSpec
from models.vit import ImageEncoder

MATCH_CLASS = 1  # itm_head's logit index for "the text describes the image"


class CADABackbone(nn.Module):
    """Image encoder, MED text encoder, MED text decoder, 256-d projections and ITM heads.

    Args:
        spec: module sizes (see :mod:`models.registry`).
        image_size: (H, W) of input images, divisible by the patch size.
        decoder_causal: causal self-attention in the text decoder (the reference) or bidirectional.
        grad_checkpointing: recompute ViT blocks and MED layers in the backward pass.
    """

    def __init__(self, spec: ModelSpec, image_size: tuple[int, int], decoder_causal: bool = True,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.spec = spec
        text_args = {"vocab_size": spec.vocab_size, "width": spec.text_width, "heads": spec.text_heads,
                     "ffn": spec.text_ffn, "image_width": spec.vision_width, "max_positions": spec.max_positions,
                     "dropout": spec.dropout, "grad_checkpointing": grad_checkpointing}
        self.visual_encoder = ImageEncoder(image_size, spec.vision_patch, spec.vision_width, spec.vision_depth,
                                           spec.vision_heads, grad_checkpointing=grad_checkpointing)
        self.text_encoder = MedBert(num_layers=spec.text_layers, **text_args)
        self.vision_proj = nn.Linear(spec.vision_width, spec.embed_dim)
        self.text_proj = nn.Linear(spec.text_width, spec.embed_dim)
        self.itm_head = nn.Linear(spec.text_width, 2)
        self.itm_local_head = nn.Linear(spec.text_width, 2)
        self.text_decoder = TextDecoder(num_layers=spec.decoder_layers, causal=decoder_causal, **text_args)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, 1 + N, Dv), [CLS] first, from images (B, 3, H, W)."""
        return self.visual_encoder(images)

    def project_image(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Unnormalised 256-d image feature (B, E) from the [CLS] token (ITM's hard-negative sims)."""
        return self.vision_proj(image_embeds[:, 0])

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """L2-normalised image feature (B, E) for retrieval."""
        return F.normalize(self.project_image(image_embeds), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    first_token_only: bool = False) -> torch.Tensor:
        """Text-mode states (B, L, Dt) of (B, L) ids starting with ``[CLS]``: bidirectional, no cross-attention.

        With ``first_token_only``, (B, 1, Dt): the [CLS] state alone (all :meth:`project_text` reads).
        """
        return self.text_encoder(input_ids, attention_mask, first_token_only=first_token_only)

    def project_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Unnormalised 256-d text feature (B, E) from the first token's state."""
        return self.text_proj(text_embeds[:, 0])

    def text_features(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """L2-normalised text feature (B, E) for retrieval."""
        return F.normalize(self.project_text(text_embeds), dim=-1)

    def fuse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
             image_index: torch.Tensor | None = None, first_token_only: bool = False) -> torch.Tensor:
        """Multimodal states (B, L, Dt), or (B, 1, Dt) with ``first_token_only`` (the last layer computes
        position 0 alone): the text encoder cross-attending to every image token.

        Args:
            input_ids: (B, L) ids whose first token is ``[ENC]``.
            image_embeds: (B, 1 + N, Dv) image tokens paired row by row with the texts, or with
                ``image_index`` (B,) the (U, 1 + N, Dv) distinct images that row b takes as ``image_index[b]``.
        """
        return self.text_encoder(input_ids, attention_mask, image_embeds=image_embeds, image_index=image_index,
                                 first_token_only=first_token_only)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """ITM logits (B, 2) from the fused states' first token; index 1 is the match class."""
        return self.itm_head(fused[:, 0])

    def itm_match_logit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                        image_index: torch.Tensor | None = None, length: int | None = None) -> torch.Tensor:
        """Raw match-class logit (B,) of each (text, image) pair, as used for re-ranking; arguments as for
        :meth:`fuse`, plus ``length``, the longest caption if known (e.g. from the host copy of the mask).

        Only position 0 is read, so the texts are first trimmed to their longest caption (exact) and the last
        layer computes position 0 alone.
        """
        input_ids, attention_mask = trim_to_longest(input_ids, attention_mask, length=length)
        fused = self.fuse(input_ids, attention_mask, image_embeds, image_index, first_token_only=True)  # (B, 1, Dt)
        return self.itm_head(fused[:, 0])[:, MATCH_CLASS]

    def decoder_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       image_embeds: torch.Tensor) -> torch.Tensor:
        """Text-decoder states (B, L, Dt) grounded on (B, 1 + N, Dv) image tokens, before the MLM head."""
        return self.text_decoder.hidden_states(input_ids, attention_mask, image_embeds)

    def decoder_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) of decoder states (..., Dt), e.g. of the masked positions only."""
        return self.text_decoder.cls(hidden)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Decoder vocabulary logits (B, L, V) for (B, L) ids grounded on (B, 1 + N, Dv) image tokens."""
        return self.text_decoder(input_ids, attention_mask, image_embeds)
