"""Attribute candidates: hand-written expected WordPiece positions with the deterministic lexicon tagger."""
import pytest

from datasets.attributes import LexiconTagger, TextBlobTagger, attribute_candidates, build_tagger
from datasets.tokenization import build_tokenizer, encode


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# (caption, token-mode groups, phrase-mode groups); the comment under each caption is its encoding.
CASES = [
    ("a woman in a grey cardigan carries a handbag",
     # 1 a 2 woman 3 in 4 a 5 grey 6 card 7 ##igan 8 carries 9 a 10 hand 11 ##bag
     [[2], [5], [6, 7], [10, 11]],
     [[2], [5, 6, 7], [10, 11]]),
    ("the man wears a black and white hoodie, khaki shorts and sneakers",
     # 1 the 2 man 3 wears 4 a 5 black 6 and 7 white 8 hood 9 ##ie 10 , 11 k 12 ##hak 13 ##i 14 shorts
     # 15 and 16 sneakers
     [[2], [5], [7], [8, 9], [11, 12, 13], [14], [16]],
     [[2], [5, 6, 7, 8, 9], [11, 12, 13, 14], [16]]),
    ("a tall girl with a ponytail is wearing sunglasses and a long-sleeved shirt",
     # 1 a 2 tall 3 girl 4 with 5 a 6 ponytail 7 is 8 wearing 9 sunglasses 10 and 11 a 12 long 13 -
     # 14 sleeve 15 ##d 16 shirt
     [[2], [3], [6], [9], [12, 13, 14, 15], [16]],
     [[2, 3], [6], [9], [12, 13, 14, 15, 16]]),
    ("he holds an umbrella and walks fast",
     # 1 he 2 holds 3 an 4 umbrella 5 and 6 walks 7 fast
     [[4]],
     [[4]]),
    ("a pedestrian in light blue jeans and brown leather boots is black and walking",
     # 1 a 2 pedestrian 3 in 4 light 5 blue 6 jeans 7 and 8 brown 9 leather 10 boots 11 is 12 black
     # 13 and 14 walking  -- the trailing "and" after "black" is not part of the chunk
     [[2], [4], [5], [6], [8], [9], [10], [12]],
     [[2], [4, 5, 6], [8, 9, 10], [12]]),
]


@pytest.mark.parametrize("caption, token_groups, phrase_groups", CASES)
def test_lexicon_candidates_by_hand(tokenizer, caption, token_groups, phrase_groups):
    tagger = LexiconTagger()
    assert attribute_candidates(caption, tokenizer, tagger, mode="token") == token_groups
    assert attribute_candidates(caption, tokenizer, tagger, mode="phrase") == phrase_groups


def test_multi_piece_words_map_to_all_their_pieces(tokenizer):
    # "cardigan" and "handbag" are two WordPieces each, "khaki" three: the word is one group.
    encoding = tokenizer.encode("grey cardigan khaki handbag")
    assert encoding.tokens[1:-1] == ["grey", "card", "##igan", "k", "##hak", "##i", "hand", "##bag"]
    groups = attribute_candidates("grey cardigan khaki handbag", tokenizer, LexiconTagger(), mode="token")
    assert groups == [[1], [2, 3], [4, 5, 6], [7, 8]]


def test_truncation_drops_positions_beyond_max_len(tokenizer):
    caption = CASES[1][0]
    tagger = LexiconTagger()
    # max_len 10 keeps pieces 1..8; "hoodie" loses its second piece.
    assert attribute_candidates(caption, tokenizer, tagger, "token", max_len=10) == [[2], [5], [7], [8]]
    assert attribute_candidates(caption, tokenizer, tagger, "phrase", max_len=10) == [[2], [5, 6, 7, 8]]


def test_tokenizer_padding_state_does_not_change_positions(tokenizer):
    caption, token_groups, _ = CASES[2]
    encode(tokenizer, [caption], max_len=73)  # leaves truncation and padding enabled on the tokenizer
    assert attribute_candidates(caption, tokenizer, LexiconTagger(), mode="token") == token_groups


class TagEverythingAsNoun:
    def tag(self, words):
        return ["NN"] * len(words)


def test_every_piece_belongs_to_a_word_and_specials_are_never_candidates(tokenizer):
    caption = "a man's t-shirt [ENC] with [SEP] logos"
    encoding = tokenizer.encode(caption)
    groups = attribute_candidates(caption, tokenizer, TagEverythingAsNoun(), mode="token")
    positions = [p for group in groups for p in group]
    special = {0, 101, 102, 30522, 30523}
    expected = [p for p in range(1, len(encoding.ids) - 1) if encoding.ids[p] not in special]
    assert sorted(positions) == expected
    assert len(expected) < len(encoding.ids) - 2  # the literal [ENC]/[SEP] really were skipped


def test_lexicon_plurals_and_compounds():
    tags = LexiconTagger().tag(["dresses", "boots", "flip-flops", "shoulder-length", "greenish", "t-shirts",
                                "walking", ",", "and"])
    assert tags == ["NNS", "NNS", "NNS", "JJ", "JJ", "NNS", "XX", ",", "CC"]


def test_unknown_tagger_and_mode_are_errors(tokenizer):
    with pytest.raises(ValueError, match="unknown attribute tagger"):
        build_tagger("spacy")
    with pytest.raises(ValueError, match="unknown attribute mode"):
        attribute_candidates("a red hat", tokenizer, LexiconTagger(), mode="chunk")


def test_textblob_tags_offline(tokenizer):
    pytest.importorskip("textblob", reason="textblob is not installed")
    tagger = TextBlobTagger()
    words = ["a", "man", "with", "short", "black", "hair", "wears", "blue", "jeans", "and", "sneakers"]
    assert tagger.tag(words) == ["DT", "NN", "IN", "JJ", "JJ", "NN", "VBZ", "JJ", "NNS", "CC", "NNS"]
    caption = "a man with short black hair wears blue jeans and sneakers"
    assert attribute_candidates(caption, tokenizer, tagger, mode="phrase") == [[2], [4, 5, 6], [8, 9], [11]]
