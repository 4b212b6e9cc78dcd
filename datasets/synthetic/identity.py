"""What a synthetic person is: a combination of visible attributes drawn from small shared vocabularies.

About a dozen colours are shared by every garment, so any one attribute is common to many identities
while the full combination is unique (duplicates are rejected by :func:`sample_identities`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Standard colour words (learnable) and the RGB each is drawn with.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30), "white": (236, 236, 232), "grey": (128, 128, 128), "red": (200, 32, 36),
    "blue": (36, 72, 200), "green": (34, 140, 56), "yellow": (236, 206, 40), "orange": (238, 128, 24),
    "purple": (120, 48, 160), "pink": (240, 146, 184), "brown": (118, 74, 36),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20), "brown": (96, 60, 30), "blonde": (226, 196, 112), "grey": (150, 150, 150),
    "red": (172, 62, 30), "white": (232, 232, 226),
}
SKIN_TONES = ((242, 204, 172), (214, 164, 124), (164, 112, 78), (102, 70, 50))  # drawn, never described
GENDERS = ("man", "woman")
BUILDS = ("slim", "average", "heavy")
HAIR_LENGTHS = ("short", "long")
HAT_TYPES = ("cap", "beanie", "sun hat")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "hoodie", "sweater", "coat")
PATTERNS = ("plain", "striped", "checked", "dotted")
LOWER_TYPES = {"man": ("trousers", "shorts"), "woman": ("trousers", "shorts", "skirt", "long skirt")}
BAG_TYPES = ("backpack", "handbag", "shoulder bag")
SIDES = ("left", "right")
# The attribute groups a caption can mention; "person" is gender and build.
ATTRIBUTE_KINDS = ("person", "hair", "hat", "upper", "lower", "shoes", "bag")

HAT_PROBABILITY = 0.35
BAG_PROBABILITY = 0.6
PATTERN_PROBABILITY = 0.4


@dataclass(frozen=True)
class Identity:
    """The attributes of one synthetic person. ``bag_side`` is the person's own side (they face the camera,
    so their left is the image's right). ``None`` means "has none" for hat and bag fields."""

    gender: str
    build: str
    skin_tone: int
    hair_colour: str
    hair_length: str
    hat: str | None
    hat_colour: str | None
    upper: str
    upper_colour: str
    upper_pattern: str
    lower: str
    lower_colour: str
    shoes_colour: str
    bag: str | None
    bag_colour: str | None
    bag_side: str | None

    def described_key(self) -> tuple:
        """The attributes captions can tell apart: everything but skin tone and bag side (images mirror)."""
        return tuple(value for name, value in dataclasses.asdict(self).items() if name not in ("skin_tone", "bag_side"))

    def mirrored(self) -> Identity:
        """The same person seen in a horizontally mirrored image: the bag changes side."""
        if self.bag_side is None:
            return self
        return dataclasses.replace(self, bag_side="right" if self.bag_side == "left" else "left")

    def colour_of(self, kind: str) -> str | None:
        """The colour word of an attribute kind (``None`` for "person" or an absent hat/bag)."""
        return {"hair": self.hair_colour, "hat": self.hat_colour, "upper": self.upper_colour,
                "lower": self.lower_colour, "shoes": self.shoes_colour, "bag": self.bag_colour}.get(kind)


def pick(rng: np.random.Generator, options: Sequence):
    """One element of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draws one person's attributes (hat, bag and garment pattern are optional) in a fixed order, so a seed
    fixes the identity."""
    colours = tuple(COLOURS)
    gender = pick(rng, GENDERS)
    build = pick(rng, BUILDS)
    skin_tone = int(rng.integers(len(SKIN_TONES)))
    hair_colour = pick(rng, tuple(HAIR_COLOURS))
    hair_length = pick(rng, HAIR_LENGTHS)
    has_hat = rng.random() < HAT_PROBABILITY
    hat, hat_colour = (pick(rng, HAT_TYPES), pick(rng, colours)) if has_hat else (None, None)
    upper, upper_colour = pick(rng, UPPER_TYPES), pick(rng, colours)
    upper_pattern = pick(rng, PATTERNS[1:]) if rng.random() < PATTERN_PROBABILITY else "plain"
    lower, lower_colour = pick(rng, LOWER_TYPES[gender]), pick(rng, colours)
    shoes_colour = pick(rng, colours)
    has_bag = rng.random() < BAG_PROBABILITY
    bag, bag_colour, bag_side = ((pick(rng, BAG_TYPES), pick(rng, colours), pick(rng, SIDES)) if has_bag
                                 else (None, None, None))
    return Identity(gender, build, skin_tone, hair_colour, hair_length, hat, hat_colour, upper, upper_colour,
                    upper_pattern, lower, lower_colour, shoes_colour, bag, bag_colour, bag_side)


def sample_identities(rng: np.random.Generator, count: int) -> list[Identity]:
    """Draws ``count`` identities whose described attributes are pairwise different."""
    identities: list[Identity] = []
    seen: set[tuple] = set()
    for _ in range(50 * count + 100):
        if len(identities) == count:
            break
        identity = sample_identity(rng)
        if identity.described_key() not in seen:
            seen.add(identity.described_key())
            identities.append(identity)
    if len(identities) < count:
        raise ValueError(f"could only draw {len(identities)} distinct identities of the {count} requested")
    return identities
