"""Offline attribute finder for ARA: which WordPiece positions of a caption name an attribute.

Whole words are POS-tagged (the reference tags WordPieces, which mis-tags ``##`` pieces), and each
word is mapped to its WordPiece positions through the tokenizer's character offsets. Words tagged
JJ/NN/NNS/NNP/NNPS are attribute words.

- token mode: each attribute word is one group (all its pieces are masked together);
- phrase mode: each chunk matching ``(JJ CC?)* NN? NNS?`` (NNP counted as NN, NNPS as NNS) is one
  group; a chunk never ends in CC ("black and" in "is black and walks" keeps only "black").

Positions are in the encoding with ``[CLS]`` at 0, so they lie in 1..max_len-2; pieces cut by
truncation and special tokens are never candidates.
"""
from __future__ import annotations

import bisect
import logging
import re
from typing import Protocol

from tokenizers import Tokenizer

from datasets.ara_masking import NEVER_MASKED_IDS
from utils.vocab import MAX_TEXT_LEN

logger = logging.getLogger(__name__)

ATTRIBUTE_TAGS = frozenset({"JJ", "NN", "NNS", "NNP", "NNPS"})
# A word keeps inner hyphens/apostrophes/slashes ("t-shirt", "man's"); other punctuation stands alone.
WORD_PATTERN = re.compile(r"\w+(?:[-'’/]\w+)*|[^\w\s]")
# One letter per tag for the chunk grammar: J = JJ, C = CC, N = NN/NNP, S = NNS/NNPS, x = other.
CHUNK_LETTERS = {"JJ": "J", "CC": "C", "NN": "N", "NNP": "N", "NNS": "S", "NNPS": "S"}
CHUNK_PATTERN = re.compile(r"(?:JC?)*N?S?")


class AttributeTagger(Protocol):
    """Assigns one Penn Treebank tag to each word."""

    def tag(self, words: list[str]) -> list[str]:
        ...


COLOURS = """black white red blue green yellow orange purple pink brown grey gray beige khaki navy maroon
burgundy violet tan cream silver gold golden dark light bright pale colorful colourful multicolored
multicoloured turquoise teal cyan magenta olive lavender ivory crimson""".split()
OTHER_ADJECTIVES = """striped stripped plaid checkered checked floral patterned printed spotted dotted plain
solid denim leather cotton wool woolen woollen knit knitted lace silk velvet suede fur furry tall short
long thin slim skinny slender fat heavy heavyset chubby stocky medium muscular young old elderly bald curly
straight wavy blond blonde brunette loose tight baggy casual formal sleeveless hooded""".split()
SINGULAR_NOUNS = """shirt t-shirt tshirt tee top blouse jacket coat overcoat raincoat windbreaker sweater
cardigan hoodie sweatshirt vest dress skirt suit uniform jumpsuit romper tank camisole polo jersey blazer
parka poncho shawl scarf tie belt sock shoe boot sneaker sandal slipper heel loafer glove hat cap beanie
helmet hood mask apron collar sleeve pocket zipper button logo stripe bag backpack handbag purse satchel
briefcase suitcase luggage tote umbrella phone cellphone bottle cup book folder box basket bicycle bike
scooter stroller cart watch bracelet necklace earring wallet newspaper hair ponytail bun braid beard
mustache moustache head face shoulder arm hand leg foot waist man woman boy girl lady gentleman guy person
pedestrian child kid""".split()
PLURAL_ONLY_NOUNS = """jeans pants trousers shorts leggings tights slacks capris sweatpants overalls glasses
sunglasses eyeglasses spectacles goggles clothes headphones earphones bangs flip-flops feet men women people
children""".split()
CONJUNCTIONS = frozenset({"and", "or", "but", "nor"})
ADJECTIVE_SUFFIXES = ("length", "ish")  # shoulder-length, knee-length; greenish


class LexiconTagger:
    """Curated lexicon of person-description words; deterministic: the fallback tagger and the test fixture.

    Lexicon adjectives → JJ, nouns → NN, their regular plurals and plural-only nouns → NNS, hyphenated words
    by their last part (or JJ for ``-ed``/``-length`` compounds), and → CC, punctuation → itself, else ``XX``.
    """

    def __init__(self) -> None:
        self.tags: dict[str, str] = {word: "JJ" for word in COLOURS + OTHER_ADJECTIVES}
        self.tags.update({word: "NN" for word in SINGULAR_NOUNS})
        self.tags.update({word: "NNS" for word in PLURAL_ONLY_NOUNS})
        self.tags.update({word: "CC" for word in CONJUNCTIONS})

    def tag(self, words: list[str]) -> list[str]:
        return [self._tag_word(word.lower()) for word in words]

    def _tag_word(self, word: str) -> str:
        if word in self.tags:
            return self.tags[word]
        plural_stems = (word[:-1], word[:-2], word[:-3] + "y") if word.endswith("s") else ()
        if any(self.tags.get(stem) == "NN" for stem in plural_stems if stem):
            return "NNS"
        if word.endswith("ish") and word[:-3] in COLOURS:
            return "JJ"
        if "-" in word:
            last = word.rsplit("-", 1)[1]
            if last.endswith("ed") or last.endswith(ADJECTIVE_SUFFIXES) or self.tags.get(last) == "JJ":
                return "JJ"
            last_tag = self._tag_word(last)
            if last_tag in ("NN", "NNS"):
                return last_tag
        if not any(char.isalnum() for char in word):
            return word
        return "XX"


class TextBlobTagger:
    """TextBlob's bundled Pattern tagger: its lexicon ships inside the package, no NLTK data needed."""

    def __init__(self) -> None:
        from textblob.en.taggers import PatternTagger

        self._tagger = PatternTagger()

    def tag(self, words: list[str]) -> list[str]:
        if not words:
            return []
        tagged = self._tagger.tag(" ".join(words), tokenize=False)
        if len(tagged) != len(words):
            raise ValueError(f"TextBlob returned {len(tagged)} tags for {len(words)} words: {words}")
        return [tag for _, tag in tagged]


class NltkTagger:
    """NLTK's averaged perceptron tagger; needs its data already installed (never downloads)."""

    def __init__(self) -> None:
        from nltk.tag import PerceptronTagger

        self._tagger = PerceptronTagger()  # LookupError when the data is not installed

    def tag(self, words: list[str]) -> list[str]:
        return [tag for _, tag in self._tagger.tag(words)]


TAGGERS = {"nltk": NltkTagger, "textblob": TextBlobTagger, "lexicon": LexiconTagger}


def build_tagger(name: str = "auto") -> AttributeTagger:
    """Builds a tagger by name (``nltk``, ``textblob``, ``lexicon``); ``auto`` tries them in that order.

    Raises:
        ValueError: unknown name.
        RuntimeError: a named tagger whose package or data is missing.
    """
    if name == "auto":
        for candidate in ("nltk", "textblob"):
            try:
                tagger = TAGGERS[candidate]()
            except (ImportError, LookupError) as error:
                logger.info("attribute tagger %s unavailable (%s)", candidate, type(error).__name__)
                continue
            logger.info("attribute tagger: %s", candidate)
            return tagger
        logger.info("attribute tagger: lexicon")
        return LexiconTagger()
    if name not in TAGGERS:
        raise ValueError(f"unknown attribute tagger {name!r}; expected one of auto, {', '.join(TAGGERS)}")
    try:
        tagger = TAGGERS[name]()
    except (ImportError, LookupError) as error:
        raise RuntimeError(f"attribute tagger {name!r} is unavailable offline: {error}") from error
    logger.info("attribute tagger: %s", name)
    return tagger


def attribute_candidates(caption: str, tokenizer: Tokenizer, tagger: AttributeTagger, mode: str = "token",
                         max_len: int = MAX_TEXT_LEN) -> list[list[int]]:
    """Groups of token positions (in 1..max_len-2, in caption order, none empty) of the caption's attribute words
    (``mode="token"``) or phrases (``mode="phrase"``); ``caption`` exactly as it will be tokenized for training.
    """
    if mode not in ("token", "phrase"):
        raise ValueError(f"unknown attribute mode {mode!r}; expected 'token' or 'phrase'")
    matches = list(WORD_PATTERN.finditer(caption))
    words = [match.group() for match in matches]
    tags = tagger.tag(words)
    if len(tags) != len(words):
        raise ValueError(f"tagger returned {len(tags)} tags for {len(words)} words of caption {caption!r}")

    word_starts = [match.start() for match in matches]
    pieces_of_word: list[list[int]] = [[] for _ in words]
    encoding = tokenizer.encode(caption)
    for position, (token_id, word_id, (start, _)) in enumerate(
            zip(encoding.ids, encoding.word_ids, encoding.offsets)):
        if word_id is None or position == 0 or position > max_len - 2 or token_id in NEVER_MASKED_IDS:
            continue
        word = bisect.bisect_right(word_starts, start) - 1
        if word >= 0 and start < matches[word].end():
            pieces_of_word[word].append(position)

    if mode == "token":
        groups = [pieces for pieces, tag in zip(pieces_of_word, tags) if tag in ATTRIBUTE_TAGS]
    else:
        letters = "".join(CHUNK_LETTERS.get(tag, "x") for tag in tags)
        groups = []
        for chunk in CHUNK_PATTERN.finditer(letters):
            end = chunk.end() - 1 if chunk.group().endswith("C") else chunk.end()
            groups.append([p for word in range(chunk.start(), end) for p in pieces_of_word[word]])
    return [group for group in groups if group]
