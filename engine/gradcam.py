"""Grad-CAM on cross-attention: which image patches a caption word's evidence comes from (as ALBEF and BLIP show).

For one cross-attention layer with attention probabilities A (heads, L, 1 + N) of the L text positions over the
image tokens, and a scalar score y,

    cam[l, n] = mean_h max(0, ∂y/∂A[h, l, n] · A[h, l, n])        (n over the N patches; the image [CLS] is dropped)

reshaped to the (H/p, W/p) patch grid. Since A ≥ 0 this equals ALBEF's clamp of the gradient times the map. The
score is the ITM match logit of the fused encoder (``itm_head`` on the first token, match class), or, for the
ARA decoder, the sum over a masked word's pieces of the decoder's logit of the true piece at its position. Word
pieces are merged into the caption's space-separated words by summing their maps (Grad-CAM mass is additive).

Default layer: ALBEF's visualisation notebook reads layer 8 of its 12-layer text encoder (the third of its six
fusion layers, two thirds of the way up). Every MED layer cross-attends, so we take the layer two thirds up,
``⌊2L/3⌋``: 8 of cada_base's 12 layers, as ALBEF, and 2 of cada_tiny's 4 (the last layer is no use: only its
first position reaches the match logit).
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from models.cada_backbone import MATCH_CLASS
from models.med_bert import MedBert, MultiHeadAttention
from utils.vocab import MASK_ID


def default_layer(num_layers: int) -> int:
    """The cross-attention layer read by default: ``⌊2L/3⌋`` of L layers (see the module docstring)."""
    return 2 * num_layers // 3


@contextmanager
def kept_cross_attention(stack: MedBert, layer: int) -> Iterator[MultiHeadAttention]:
    """Makes ``stack``'s layer ``layer`` keep its cross-attention probabilities while the block runs."""
    layers = stack.encoder.layer
    if not 0 <= layer < len(layers):
        raise ValueError(f"cross-attention layer {layer} does not exist: the stack has layers 0..{len(layers) - 1}")
    attention = layers[layer].crossattention.self
    attention.keep_probabilities = True
    try:
        yield attention
    finally:
        attention.keep_probabilities = False
        attention.probabilities = None


def attention_gradcam(score: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (B, L, N) of scores (B,) on probabilities (B, heads, L, 1 + N) (module docstring)."""
    gradient, = torch.autograd.grad(score.sum(), probabilities)  # rows are independent: one backward for all
    return (gradient * probabilities).clamp(min=0).mean(dim=1)[:, :, 1:].detach()


def to_grid(cams: torch.Tensor, image_size: Sequence[int], patch: int) -> torch.Tensor:
    """(..., N) patch values → (..., H/p, W/p) on the patch grid of an (H, W) input."""
    return cams.reshape(*cams.shape[:-1], image_size[0] // patch, image_size[1] // patch)


def itm_gradcam(model, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the ITM match logit per text position: ``(cams (B, L, N), match logits (B,))``.

    Args:
        model: a CADA backbone in eval mode.
        image_embeds: (B, 1 + N, Dv) image tokens.
        input_ids: (B, L) ids whose first token is ``[ENC]``; attention_mask: (B, L).
        layer: the text encoder's cross-attention layer read.
    """
    with kept_cross_attention(model.text_encoder, layer) as attention, torch.enable_grad():
        image_embeds = image_embeds.detach().requires_grad_()  # the graph reaches A even with frozen weights
        logit = model.itm_logits(model.fuse(input_ids, attention_mask, image_embeds))[:, MATCH_CLASS]  # (B,)
        return attention_gradcam(logit, attention.probabilities), logit.detach()


def decoder_gradcam(model, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    word_positions: Sequence[Sequence[int]], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the ARA decoder predicting each word with that word masked (one masked word per row).

    Returns ``(cams (W, N) summed over each word's positions, log-probability of each whole word (W,))``.

    Args:
        model: a CADA backbone in eval mode.
        image_embeds: (1, 1 + N, Dv) image tokens.
        input_ids: (1, L) caption ids as the decoder reads them (``[CLS]`` first); attention_mask: (1, L).
        word_positions: per explained word, its token positions (all masked together, as ARA masks a word).
        layer: the decoder's cross-attention layer read.
    """
    rows = len(word_positions)
    selected = torch.zeros(rows, input_ids.shape[1], dtype=torch.bool, device=input_ids.device)  # (W, L)
    for row, positions in enumerate(word_positions):
        selected[row, list(positions)] = True
    masked = input_ids.expand(rows, -1).masked_fill(selected, MASK_ID)  # (W, L)
    with kept_cross_attention(model.text_decoder.bert, layer) as attention, torch.enable_grad():
        image_embeds = image_embeds.detach().expand(rows, -1, -1).requires_grad_()
        hidden = model.decoder_hidden(masked, attention_mask.expand(rows, -1), image_embeds)  # (W, L, D)
        logits = model.decoder_logits(hidden[selected])  # (P, V): the masked positions, row by row
        truth = input_ids.expand(rows, -1)[selected]  # (P,)
        row_of = selected.nonzero()[:, 0]  # (P,)
        zeros = torch.zeros(rows, device=logits.device)
        score = zeros.index_add(0, row_of, logits.gather(1, truth[:, None])[:, 0])
        log_probability = zeros.index_add(0, row_of, logits.log_softmax(-1).gather(1, truth[:, None])[:, 0])
        cams = attention_gradcam(score, attention.probabilities)  # (W, L, N)
    return (cams * selected[..., None]).sum(dim=1), log_probability.detach()


def caption_words(tokenizer: Tokenizer, text: str, max_len: int) -> tuple[list[str], torch.Tensor]:
    """The caption's space-separated words and, per token position of its (max_len) encoding, the index of the
    word the token lies in (−1 for special tokens and padding)."""
    words = text.split(" ")
    starts = list(itertools.accumulate((len(word) + 1 for word in words[:-1]), initial=0))  # each word's first char
    tokenizer.enable_truncation(max_len)
    encoding = tokenizer.encode(text)
    token_words = [-1 if special else bisect.bisect_right(starts, begin) - 1
                   for (begin, _), special in zip(encoding.offsets, encoding.special_tokens_mask)]
    return words, torch.tensor(token_words + [-1] * (max_len - len(token_words)))


def merge_word_pieces(token_maps: torch.Tensor, token_words: torch.Tensor, num_words: int) -> torch.Tensor:
    """Sums per-token maps (L, ...) into per-word maps (num_words, ...); tokens of word −1 are left out."""
    token_words = token_words.to(token_maps.device)
    keep = token_words >= 0
    return token_maps.new_zeros(num_words, *token_maps.shape[1:]).index_add(0, token_words[keep], token_maps[keep])


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(W, h, w) patch-grid maps → (W, H, W') bilinear at pixel resolution ``size`` (non-negative stays so)."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
