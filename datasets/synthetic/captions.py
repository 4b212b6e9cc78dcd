"""Writes varied English captions for a synthetic identity.

Each caption mentions a random subset of the attribute kinds (so two captions of one image, and
captions of different people, overlap only partly, as in real data), with synonyms for garments and
several sentence templates. Colour words are the standard ones of :mod:`identity` and always come
right before the thing they colour (possibly with a pattern word between), never after it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datasets.synthetic.identity import ATTRIBUTE_KINDS, Identity, pick

PERSON_NOUNS = {"man": ("man", "guy", "gentleman", "male"), "woman": ("woman", "lady", "girl", "female")}
PRONOUNS = {"man": ("he", "his"), "woman": ("she", "her")}
BUILD_WORDS = {"slim": ("slim", "thin", "slender"), "average": ("medium-build",),
               "heavy": ("heavy-set", "stocky", "chubby")}
HAT_NOUNS = {"cap": ("cap", "baseball cap"), "beanie": ("beanie", "knit hat"), "sun hat": ("sun hat", "wide hat")}
UPPER_NOUNS = {"t-shirt": ("t-shirt", "tee", "short-sleeved shirt"), "shirt": ("shirt", "button-up shirt"),
               "jacket": ("jacket", "zip-up jacket"), "hoodie": ("hoodie", "hooded sweatshirt"),
               "sweater": ("sweater", "jumper"), "coat": ("coat", "long coat")}
PATTERN_WORDS = {"striped": ("striped",), "checked": ("checked", "plaid"), "dotted": ("dotted", "polka-dot")}
LOWER_NOUNS = {"trousers": ("trousers", "pants", "long pants"), "shorts": ("shorts",),
               "skirt": ("skirt", "short skirt"), "long skirt": ("long skirt", "maxi skirt")}
SHOE_NOUNS = ("shoes", "sneakers")
BAG_NOUNS = {"backpack": ("backpack", "rucksack"), "handbag": ("handbag", "purse"),
             "shoulder bag": ("shoulder bag", "messenger bag")}
PLURAL_NOUNS = {"trousers", "pants", "long pants", "shorts", "shoes", "sneakers"}
MIN_MENTIONS, MAX_MENTIONS = 3, 6


def sample_mentions(rng: np.random.Generator) -> tuple[str, ...]:
    """A random subset of 3–6 attribute kinds, in :data:`ATTRIBUTE_KINDS` order."""
    count = int(rng.integers(MIN_MENTIONS, MAX_MENTIONS + 1))
    chosen = set(rng.choice(len(ATTRIBUTE_KINDS), size=count, replace=False).tolist())
    return tuple(kind for i, kind in enumerate(ATTRIBUTE_KINDS) if i in chosen)


def _with_article(phrase: str, noun: str) -> str:
    if noun in PLURAL_NOUNS:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _garment(rng: np.random.Generator, colour: str, noun: str, pattern: str = "plain") -> str:
    """``a blue striped tee`` / ``a striped blue tee`` / ``red shorts``: colour always before the noun."""
    words = [colour, noun]
    if pattern != "plain":
        words.insert(int(rng.integers(2)), pick(rng, PATTERN_WORDS[pattern]))
    return _with_article(" ".join(words), noun)


def _clothing_phrases(person: Identity, rng: np.random.Generator, kinds: Sequence[str]) -> list[str]:
    phrases = []
    if "hat" in kinds and person.hat is not None:
        phrases.append(_garment(rng, person.hat_colour, pick(rng, HAT_NOUNS[person.hat])))
    if "upper" in kinds:
        phrases.append(_garment(rng, person.upper_colour, pick(rng, UPPER_NOUNS[person.upper]),
                                person.upper_pattern))
    if "lower" in kinds:
        phrases.append(_garment(rng, person.lower_colour, pick(rng, LOWER_NOUNS[person.lower])))
    if "shoes" in kinds:
        noun = pick(rng, SHOE_NOUNS)
        phrases.append(f"a pair of {person.shoes_colour} {noun}" if rng.random() < 0.3
                       else f"{person.shoes_colour} {noun}")
    if len(phrases) > 1 and rng.random() < 0.4:
        phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    return phrases


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _bag_phrase(person: Identity, rng: np.random.Generator, possessive: str) -> str:
    """``a black backpack on his back`` / ``a red purse in her left hand`` (sides are the person's own)."""
    noun = pick(rng, BAG_NOUNS[person.bag])
    phrase = _with_article(f"{person.bag_colour} {noun}", noun)
    if rng.random() < 0.5:
        return phrase
    if person.bag == "backpack":
        return f"{phrase} on {possessive} back"
    if person.bag == "handbag":
        return f"{phrase} in {possessive} {person.bag_side} hand"
    return f"{phrase} at {possessive} {person.bag_side} side"


def describe(person: Identity, rng: np.random.Generator, kinds: Sequence[str] | None = None) -> str:
    """One caption of ``person`` that mentions exactly the attribute kinds in ``kinds``.

    Args:
        person: the identity as seen in the image (its ``bag_side`` must match the image).
        kinds: the attribute kinds to mention; ``None`` draws them with :func:`sample_mentions`. The
            person's gender is always stated (noun and pronouns); ``"person"`` adds the build.
    """
    kinds = sample_mentions(rng) if kinds is None else tuple(kinds)
    if unknown := set(kinds) - set(ATTRIBUTE_KINDS):
        raise ValueError(f"unknown attribute kinds {sorted(unknown)}; known: {ATTRIBUTE_KINDS}")
    pronoun, possessive = PRONOUNS[person.gender]
    noun = pick(rng, PERSON_NOUNS[person.gender])
    if "person" in kinds:
        noun = f"{pick(rng, BUILD_WORDS[person.build])} {noun}"
    subject = _with_article(noun, noun) if rng.random() < 0.6 else f"{pick(rng, ('the', 'this'))} {noun}"
    hair = f"{person.hair_length} {person.hair_colour} hair" if rng.random() < 0.7 else f"{person.hair_colour} hair"
    clothes = _clothing_phrases(person, rng, kinds)

    sentences = []
    hair_in_subject = "hair" in kinds and rng.random() < 0.4
    if hair_in_subject:
        subject = f"{subject} with {hair}"
    if clothes:
        verb = pick(rng, ("is wearing", "wears", "is dressed in", "is in"))
        sentences.append(f"{subject} {verb} {_join(clothes)}")
    else:
        sentences.append(f"{subject} is walking" if hair_in_subject or "hair" not in kinds
                         else f"{subject} has {hair}")
        hair_in_subject = True
    if "hair" in kinds and not hair_in_subject:
        sentences.append(f"{pronoun} has {hair}")
    if "hat" in kinds and person.hat is None:
        sentences.append(pick(rng, (f"{pronoun} is not wearing a hat", f"{pronoun} wears no hat")))
    if "bag" in kinds:
        if person.bag is None:
            sentences.append(pick(rng, (f"{pronoun} is not carrying a bag", f"{pronoun} carries no bag")))
        else:
            verb = pick(rng, ("is carrying", "carries", "has"))
            sentences.append(f"{pronoun} {verb} {_bag_phrase(person, rng, possessive)}")
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _part_vocabulary(person: Identity) -> dict[str, tuple[set[str], set[str]]]:
    """Per part the person has: (head nouns that end its phrase, every word its phrase can hold)."""
    phrases = {"upper": UPPER_NOUNS[person.upper], "lower": LOWER_NOUNS[person.lower], "shoes": SHOE_NOUNS,
               "hair": ("hair",)}
    modifiers = {"upper": (person.upper_colour, *PATTERN_WORDS.get(person.upper_pattern, ())),
                 "lower": (person.lower_colour,), "shoes": (person.shoes_colour,),
                 "hair": (person.hair_colour, person.hair_length)}
    if person.hat is not None:
        phrases["hat"], modifiers["hat"] = HAT_NOUNS[person.hat], (person.hat_colour,)
    if person.bag is not None:
        phrases["bag"], modifiers["bag"] = BAG_NOUNS[person.bag], (person.bag_colour,)
    return {part: ({phrase.split()[-1] for phrase in nouns},
                   {word for phrase in nouns for word in phrase.split()} | set(modifiers[part]))
            for part, nouns in phrases.items()}


def word_parts(person: Identity, words: Sequence[str]) -> list[str | None]:
    """The part of ``person`` each of the cleaned caption's ``words`` (split on spaces, trailing commas allowed)
    names (garment noun, its colour or pattern, hair words), or None.

    Colour and pattern words always come right before the noun they describe (see :func:`describe`), so a
    right-to-left scan gives each head noun's part to the words before it for as long as they belong to that
    part's phrase. Words about a part the person lacks ("wears no hat") name no region.
    """
    vocabulary = _part_vocabulary(person)
    parts: list[str | None] = [None] * len(words)
    current = None
    for index in reversed(range(len(words))):
        word = words[index].rstrip(",")
        head = next((part for part, (heads, _) in vocabulary.items() if word in heads), None)
        if head is not None:
            current = head
        elif current is not None and word not in vocabulary[current][1]:
            current = None
        parts[index] = current
    return parts
