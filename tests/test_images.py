"""Images read right: EXIF orientation, 16-bit grey, transparency, CMYK, and named errors for broken files.

Every image is built here; the expected pixels are worked out by hand in the comments.
"""
import numpy as np
import pytest
from PIL import Image

from datasets.images import load_rgb, to_rgb
from utils.errors import DataError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)  # (H, W, 3)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    # v8 = round(255 * v16 / 65535) = round(v16 / 257)
    values = np.array([[0, 300, 32896, 65535]], dtype=np.uint16)  # -> 0, 1 (300/257 = 1.17), 128, 255
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    assert Image.open(path).convert("RGB").getpixel((1, 0)) == (255, 255, 255)  # the old reading: white
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (4, 1)
    assert pixels(image)[0].tolist() == [[0, 0, 0], [1, 1, 1], [128, 128, 128], [255, 255, 255]]


def test_16_bit_gradient_keeps_its_order_and_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None]  # (1, 256)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    grey = pixels(load_rgb(path))[0, :, 0]
    assert grey.tolist() == list(range(256))  # step 65535/255 = 257: exactly one 8-bit level per column


def test_32_bit_integer_grey_is_read_as_16_bit_range():
    image = Image.fromarray(np.array([[0, 257, 65535, 70000]], dtype=np.int32))  # mode I
    assert image.mode == "I"
    assert pixels(to_rgb(image))[0, :, 1].tolist() == [0, 1, 255, 255]  # 70000 is clipped to 65535


def test_exif_orientation_6_is_turned_upright(tmp_path):
    stored = Image.new("RGB", (40, 20), (0, 0, 255))  # stored 40 wide, 20 high, blue
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer turns the stored picture 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    image = load_rgb(path)
    # turned clockwise: 20 wide, 40 high, and the stored top-left corner is now the top-right one
    assert image.size == (20, 40)
    assert np.abs(pixels(image)[2, 17] - [255, 0, 0]).max() < 10
    assert np.abs(pixels(image)[2, 2] - [0, 0, 255]).max() < 10
    assert np.abs(pixels(image)[37, 17] - [0, 0, 255]).max() < 10


def test_palette_png_with_transparency_becomes_opaque_on_white(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 0])  # 0: black (transparent), 1: red, 2: green
    image.putdata([0, 1, 2])
    path = tmp_path / "icon.png"
    image.save(path, transparency=0)
    assert pixels(load_rgb(path))[0].tolist() == [[255, 255, 255], [255, 0, 0], [0, 128, 0]]


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 255), (0, 0, 0, 0)])
    assert pixels(to_rgb(rgba))[0].tolist() == [[255, 0, 0], [255, 255, 255]]
    half = to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 128)))  # 128/255 red over white: G = B = 255*127/255
    assert np.abs(pixels(half)[0, 0] - [255, 127, 127]).max() <= 1
    grey_alpha = Image.new("LA", (1, 1), (0, 0))  # a fully transparent black pixel
    assert pixels(to_rgb(grey_alpha))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg_and_grey_become_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    cmyk.paste((0, 0, 0, 128), (8, 0, 16, 8))  # half black: grey 127
    path = tmp_path / "print.jpg"
    cmyk.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image = pixels(load_rgb(path))
    assert np.abs(image[4, 2] - [255, 0, 0]).max() < 8
    assert np.abs(image[4, 13] - [127, 127, 127]).max() < 8
    assert pixels(to_rgb(Image.new("L", (1, 1), 77)))[0, 0].tolist() == [77, 77, 77]


def test_truncated_file_is_a_data_error_naming_it(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "cut.png"
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"unreadable image .*cut\.png: .*truncated"):
        load_rgb(path)


def test_not_an_image_and_missing_file_are_data_errors_naming_them(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(DataError, match=r"unreadable image .*notes\.jpg: cannot identify image file"):
        load_rgb(text)
    with pytest.raises(DataError, match=r"missing image .*absent\.jpg"):
        load_rgb(tmp_path / "absent.jpg")
