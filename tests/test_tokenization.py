import pytest

from datasets.tokenization import build_tokenizer, encode
from utils.vocab import CLS_ID, DEC_ID, ENC_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID, VOCAB_SIZE


def test_special_ids_and_vocab_size():
    tokenizer = build_tokenizer()
    expected = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID,
                "[DEC]": DEC_ID, "[ENC]": ENC_ID}
    assert {token: tokenizer.token_to_id(token) for token in expected} == expected
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, DEC_ID, ENC_ID) == (0, 100, 101, 102, 103, 30522, 30523)
    assert tokenizer.get_vocab_size() == VOCAB_SIZE == 30524


def test_encode_uncased_padded_and_truncated():
    tokenizer = build_tokenizer()
    ids, mask = encode(tokenizer, ["A Woman in a RED coat", "word " * 200], max_len=10)
    assert ids.shape == mask.shape == (2, 10)
    pieces = [tokenizer.id_to_token(i) for i in ids[0].tolist()]
    assert pieces == ["[CLS]", "a", "woman", "in", "a", "red", "coat", "[SEP]", "[PAD]", "[PAD]"]
    assert mask[0].tolist() == [1] * 8 + [0] * 2
    assert ids[1, 0] == CLS_ID and ids[1, -1] == SEP_ID and mask[1].all()  # cut keeps [SEP] last


def test_other_local_vocabulary(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "coat"]))
    tokenizer = build_tokenizer(tmp_path)
    assert tokenizer.token_to_id("[DEC]") == 7 and tokenizer.token_to_id("[ENC]") == 8
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        build_tokenizer(tmp_path / "missing")
