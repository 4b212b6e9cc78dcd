"""BLIP's "MED" BERT: one stack of post-LN layers used in a text mode and an image-grounded mode.

Each layer (LayerNorm eps 1e-12, dropout on every residual branch and on attention probabilities):

    h = LN(h + W_o SelfAttn(h))                      # bidirectional, or causal for the decoder
    h = LN(h + W_o CrossAttn(h, image tokens))       # multimodal mode only; skipped in text mode
    h = LN(h + W_2 GELU(W_1 h))

Embeddings are word + absolute position (no token types), then LayerNorm and dropout; there is no
pooler. Module names reproduce BLIP's checkpoint keys (``embeddings.*``, ``encoder.layer.N.*``,
``cls.predictions.*``) so that weights load one to one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.vocab import PAD_ID

LAYER_NORM_EPS = 1e-12


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of ``hidden`` (width D, a multiple of ``heads``) over ``context`` (itself, or
    image tokens of width ``context_width``); ``dropout`` applies to the attention probabilities while training."""

    def __init__(self, width: int, heads: int, context_width: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)
        # Explaining only (engine/gradcam.py, eval mode): compute the attention probabilities explicitly and keep
        # the last ones, (B, heads, L, S) in the graph, for Grad-CAM; otherwise the fused SDPA kernel runs.
        self.keep_probabilities = False
        self.probabilities: torch.Tensor | None = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, heads, L, D/heads)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, keep: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """Attends (B, L, D) queries over (B, S, Dc) context; ``keep`` is a bool mask broadcastable to
        (B, heads, L, S), True where attention is allowed, or None for no mask. Returns (B, L, D).

        With ``context_index`` (B,) long, ``context`` is (U, S, Dc) and row b attends over context
        ``context_index[b]``: keys and values are projected once per distinct context and then gathered.
        """
        query = self._split_heads(self.query(hidden))  # (B, heads, L, D/heads)
        key = self._split_heads(self.key(context))  # (B or U, heads, S, D/heads)
        value = self._split_heads(self.value(context))
        if context_index is not None:
            key, value = key[context_index], value[context_index]  # (B, heads, S, D/heads)
        if self.keep_probabilities:
            scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5  # (B, heads, L, S)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            self.probabilities = scores.softmax(dim=-1)
            attended = self.probabilities @ value
        else:
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=keep,
                                                      dropout_p=self.dropout if self.training else 0.0)
        return attended.transpose(1, 2).flatten(2)  # (B, L, D)


class ResidualOutput(nn.Module):
    """``LayerNorm(residual + Dropout(dense(x)))``, the post-LN sublayer output."""

    def __init__(self, in_width: int, width: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class AttentionSublayer(nn.Module):
    """Attention followed by its residual output (checkpoint names ``self`` and ``output``)."""

    def __init__(self, width: int, heads: int, context_width: int, dropout: float) -> None:
        super().__init__()
        self.self = MultiHeadAttention(width, heads, context_width, dropout)
        self.output = ResidualOutput(width, width, dropout)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, keep: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(hidden, context, keep, context_index), hidden)


class Intermediate(nn.Module):
    """First feed-forward projection and its GELU."""

    def __init__(self, width: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, ffn)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class MedLayer(nn.Module):
    """One MED layer: self-attention, optional cross-attention to image tokens, feed-forward."""

    def __init__(self, width: int, heads: int, ffn: int, image_width: int, dropout: float) -> None:
        super().__init__()
        self.attention = AttentionSublayer(width, heads, width, dropout)
        self.crossattention = AttentionSublayer(width, heads, image_width, dropout)
        self.intermediate = Intermediate(width, ffn)
        self.output = ResidualOutput(ffn, width, dropout)

    def forward(self, hidden: torch.Tensor, self_keep: torch.Tensor, image_embeds: torch.Tensor | None,
                image_keep: torch.Tensor | None, image_index: torch.Tensor | None = None,
                first_token_only: bool = False) -> torch.Tensor:
        """(B, L, D) states in, (B, L, D) out; with ``first_token_only`` only position 0 is computed, (B, 1, D),
        its self-attention still reading every position (``self_keep`` must then be (B, 1, 1, L))."""
        queries = hidden[:, :1] if first_token_only else hidden
        hidden = self.attention(queries, hidden, self_keep)
        if image_embeds is not None:
            hidden = self.crossattention(hidden, image_embeds, image_keep, image_index)
        return self.output(self.intermediate(hidden), hidden)


class MedLayerStack(nn.Module):
    """The layers (checkpoint name ``encoder.layer.N``), optionally recomputed in the backward pass."""

    def __init__(self, num_layers: int, width: int, heads: int, ffn: int, image_width: int, dropout: float,
                 grad_checkpointing: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MedLayer(width, heads, ffn, image_width, dropout) for _ in range(num_layers))
        self.grad_checkpointing = grad_checkpointing

    def forward(self, hidden: torch.Tensor, self_keep: torch.Tensor, image_embeds: torch.Tensor | None,
                image_keep: torch.Tensor | None, image_index: torch.Tensor | None = None,
                first_token_only: bool = False) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            first_only = first_token_only and index == last
            if recompute:
                hidden = checkpoint(layer, hidden, self_keep, image_embeds, image_keep, image_index, first_only,
                                    use_reentrant=False)
            else:
                hidden = layer(hidden, self_keep, image_embeds, image_keep, image_index, first_only)
        return hidden


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (no token-type embeddings).

    As in BERT, ``[PAD]`` (id 0) is the word table's padding index: its lookups give its row no gradient.
    """

    def __init__(self, vocab_size: int, width: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        # Saved in BLIP's checkpoints, hence persistent.
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_ids.shape[1]:
            raise ValueError(f"text length {length} exceeds the {self.position_ids.shape[1]} position embeddings")
        positions = self.position_ids[:, :length]  # (1, L)
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, L, D)
        return self.dropout(self.LayerNorm(embedded))


def _init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MedBert(nn.Module):
    """MED BERT encoder with a text mode and a multimodal (cross-attention) mode over one set of weights.

    Args:
        vocab_size: 30,524 with ``[DEC]``/``[ENC]``.
        width: hidden width D.
        image_width: width of the image tokens that cross-attention reads (may differ from D).
        dropout: hidden and attention-probability dropout.
    """

    def __init__(self, vocab_size: int, width: int, num_layers: int, heads: int, ffn: int, image_width: int,
                 max_positions: int = 512, dropout: float = 0.1, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.embeddings = TextEmbeddings(vocab_size, width, max_positions, dropout)
        self.encoder = MedLayerStack(num_layers, width, heads, ffn, image_width, dropout, grad_checkpointing)
        self.apply(_init_bert_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, causal: bool = False,
                image_index: torch.Tensor | None = None, first_token_only: bool = False) -> torch.Tensor:
        """Encodes token ids; returns hidden states (B, L, D), or (B, 1, D) with ``first_token_only``.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 1 for real tokens, 0 for padding (keys only; padded queries still
                get outputs, which callers ignore).
            image_embeds: (B, S, Dv) image tokens for cross-attention; None selects the text mode.
            image_mask: (B, S), 1 for image tokens to attend to; None attends to all.
            causal: position t attends only to positions <= t (the decoder's self-attention).
            image_index: (B,) long or None. When given, ``image_embeds`` (U, S, Dv) and ``image_mask``
                (U, S) hold U distinct images, row b cross-attends to image ``image_index[b]``, and each
                layer projects each image's keys and values once (re-ranking shares them between queries).
            first_token_only: compute the last layer for position 0 alone ([CLS] features, the ITM logit):
                the full pass's first row up to float rounding, as earlier layers run on every position.
        """
        if first_token_only and causal:
            raise ValueError("first_token_only is for bidirectional passes; the causal decoder reads every position")
        length = input_ids.shape[1]
        self_keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        if causal:
            lower = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
            self_keep = self_keep & lower  # (B, 1, L, L)
        image_keep = None if image_mask is None else image_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        if image_keep is not None and image_index is not None:
            image_keep = image_keep[image_index]
        hidden = self.embeddings(input_ids)  # (B, L, D)
        return self.encoder(hidden, self_keep, image_embeds, image_keep, image_index, first_token_only)


class PredictionTransform(nn.Module):
    """dense → GELU → LayerNorm before the vocabulary projection."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class TokenPredictions(nn.Module):
    """Vocabulary logits with the projection tied to the word embeddings.

    ``decoder.weight`` is the word-embedding Parameter and ``decoder.bias`` is ``bias`` (the same
    Parameter), so the state dict lists both names, as BLIP's checkpoints do.
    """

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        vocab_size, width = word_embeddings.weight.shape
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.transform = PredictionTransform(width)
        self.transform.apply(_init_bert_weights)
        self.decoder = nn.Linear(width, vocab_size, device="meta")  # both Parameters replaced below
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # (B, L, V)


class MLMHead(nn.Module):
    """BERT's masked-LM head (checkpoint name ``cls.predictions``)."""

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = TokenPredictions(word_embeddings)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class TextDecoder(nn.Module):
    """Image-grounded MED stack + masked-LM head predicting every position's token; arguments as for
    :class:`MedBert`, with causal self-attention (the reference) unless ``causal=False``."""

    def __init__(self, vocab_size: int, width: int, num_layers: int, heads: int, ffn: int, image_width: int,
                 max_positions: int = 512, dropout: float = 0.1, causal: bool = True,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.bert = MedBert(vocab_size, width, num_layers, heads, ffn, image_width, max_positions, dropout,
                            grad_checkpointing)
        self.cls = MLMHead(self.bert.embeddings.word_embeddings)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                      image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder states (B, L, D) before the MLM head; arguments as for :meth:`forward`."""
        return self.bert(input_ids, attention_mask, image_embeds, image_mask, causal=self.causal)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns vocabulary logits (B, L, V); arguments as for :meth:`MedBert.forward`."""
        return self.cls(self.hidden_states(input_ids, attention_mask, image_embeds, image_mask))
