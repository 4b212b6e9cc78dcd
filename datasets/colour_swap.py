"""Colour-swapped captions: a caption with one colour word replaced, as an extra ITM negative.

"A man in a red jacket and black trousers" becomes "a man in a green jacket and black trousers": the
same sentence, wrong in exactly one attribute, so the only way to tell it from the true caption is to
look at the jacket in the image. In-batch hard negatives rarely differ from the anchor this little,
yet the top of a cosine ranking is full of such near misses: these are what re-ranking must separate.

The swap works on token ids. Sources and replacements are the eleven basic colour terms (every one a
single WordPiece in the BERT vocabulary); "gray" is also a source, as a spelling of "grey", and is
never replaced by "grey" or the reverse, so a swap always changes the colour.
"""
from __future__ import annotations

import torch

BASIC_COLOURS = ("black", "white", "grey", "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown")
SPELLINGS = {"gray": "grey"}  # other spellings of a basic colour: swapped like it, never swapped into it


def colour_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the colour words.

    Args:
        tokenizer: from ``datasets.tokenization.build_tokenizer``.

    Returns:
        ``(colour_of_token, colour_ids)``: (V,) int64 giving each vocabulary token's index in
        :data:`BASIC_COLOURS` (−1 for other tokens; a spelling maps to its colour's index), and
        (C,) int64, the token id of each basic colour.

    Raises:
        ValueError: a colour word is not a single token of this vocabulary.
    """
    colour_of_token = torch.full((tokenizer.get_vocab_size(),), -1, dtype=torch.long)
    for word, colour in ({word: word for word in BASIC_COLOURS} | SPELLINGS).items():
        token = tokenizer.token_to_id(word)
        if token is None:
            raise ValueError(f"colour word {word!r} is not a single token of the tokenizer's vocabulary")
        colour_of_token[token] = BASIC_COLOURS.index(colour)
    colour_ids = torch.tensor([tokenizer.token_to_id(word) for word in BASIC_COLOURS], dtype=torch.long)
    return colour_of_token, colour_ids


def swap_one_colour(
    input_ids: torch.Tensor,
    colour_of_token: torch.Tensor,
    colour_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, bool]:
    """Replaces one colour word of a caption by a different basic colour, both drawn uniformly.

    Args:
        input_ids: (L,) token ids of one caption.
        colour_of_token: (V,) from :func:`colour_table`.
        colour_ids: (C,) from :func:`colour_table`.
        generator: CPU random generator.

    Returns:
        ``(swapped_ids (L,), swapped)``; without a colour word the ids come back unchanged and
        ``swapped`` is False.
    """
    colours = colour_of_token[input_ids]  # (L,) colour index or −1
    positions = (colours >= 0).nonzero().flatten()
    if positions.numel() == 0:
        return input_ids.clone(), False
    # two draws always, so the stream does not depend on how many colours a caption has
    which, offset = torch.rand(2, generator=generator).tolist()
    position = int(positions[int(which * positions.numel())])
    # a different colour: step 1..C-1 places round the colour circle from the original
    step = 1 + int(offset * (colour_ids.numel() - 1))
    replacement = colour_ids[(int(colours[position]) + step) % colour_ids.numel()]
    swapped = input_ids.clone()
    swapped[position] = replacement
    return swapped, True
