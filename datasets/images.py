"""Reading an image file as the 8-bit RGB picture a viewer shows: upright, full-range, opaque.

- EXIF orientation (phone photos) is applied, so a photo taken sideways is read upright.
- 16-bit and 32-bit integer grey (modes ``I;16``, ``I;16B``, ``I;16L``, ``I``) is scaled to 8 bits,
  ``v8 = round(255 * v16 / 65535)``; a plain ``convert`` would clip every value above 255 to white.
- Images with transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent index) are
  composited onto :data:`TRANSPARENT_BACKGROUND`; the colours stored under transparent pixels mean nothing.
- Grey, palette, CMYK and other modes use Pillow's conversion to RGB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.errors import DataError

TRANSPARENT_BACKGROUND = (255, 255, 255)
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_MAX_16_BIT = 65535
# What Pillow raises for files it cannot identify or decode (truncated, corrupt, not an image).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_rgb(path: str | Path) -> Image.Image:
    """Decodes the whole file (any format Pillow reads) and returns it upright as an 8-bit RGB image.

    Raises DataError naming the file when it is missing, not an image, or cannot be fully decoded (truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing image {path}: expected an image file at this path")
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except _DECODE_ERRORS as error:
        raise DataError(f"unreadable image {path}: {error} (expected a complete image file)") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts a decoded image of any mode to 8-bit RGB (module-level, so transforms using it pickle)."""
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_GREY_MODES:  # 16-bit (or 32-bit integer holding 16-bit) grey, rounded to nearest
        values = np.asarray(image).astype(np.int64).clip(0, _MAX_16_BIT)  # (H, W)
        scaled = (values * 255 + _MAX_16_BIT // 2) // _MAX_16_BIT
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")  # via mode L
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
