"""BERT uncased WordPiece tokenizer with BLIP's two extra tokens, built offline from a vocab file.

Ids: ``[PAD]``=0, ``[UNK]``=100, ``[CLS]``=101, ``[SEP]``=102, ``[MASK]``=103, and BLIP's
``[DEC]``=30522 (decoder bos) and ``[ENC]``=30523 (first token of the fused pass): vocab 30,524.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.decoders import WordPiece as WordPieceDecoder
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing

from utils.vocab import MAX_TEXT_LEN, PAD_ID

BUNDLED_VOCAB = Path(__file__).resolve().parent / "assets" / "bert-base-uncased" / "vocab.txt"


def build_tokenizer(path: str | Path = "") -> Tokenizer:
    """Builds the WordPiece tokenizer, adding ``[DEC]`` and ``[ENC]`` after the base vocabulary; never online.

    ``path`` is a ``vocab.txt`` file or a folder holding one; empty means the bundled bert-base-uncased vocabulary.
    """
    vocab_file = Path(path) if path else BUNDLED_VOCAB
    if vocab_file.is_dir():
        vocab_file = vocab_file / "vocab.txt"
    if not vocab_file.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_file} (expected a BERT vocab.txt)")
    tokenizer = Tokenizer(WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
    tokenizer.normalizer = BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.decoder = WordPieceDecoder()
    base_size = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens(["[DEC]", "[ENC]"])
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    if (tokenizer.token_to_id("[DEC]"), tokenizer.token_to_id("[ENC]")) != (base_size, base_size + 1):
        raise ValueError(f"{vocab_file}: [DEC]/[ENC] did not land right after the {base_size}-token vocabulary")
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str], max_len: int = MAX_TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizes captions to fixed-length ids and attention mask, both (B, max_len) int64.

    Long captions are cut so that ``[SEP]`` stays the last real token.
    """
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(length=max_len, pad_id=PAD_ID, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask
