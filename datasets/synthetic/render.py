"""Draws one synthetic pedestrian with Pillow: a front-facing figure over a cluttered background, with
random pose offset, scale, lighting and partial occlusion.

Drawing happens at twice the target resolution and is box-filtered down, which anti-aliases the
edges. Body geometry is in units of the figure's height ``u`` (0 = top of the head, 1 = soles).

:func:`render_person_with_regions` also paints every shape, with its part's label instead of its colour, on a
label map (later shapes and the occluder cover earlier ones there too), so each part's region is exactly where it
stays visible; it draws the same pixels from the same random numbers as :func:`render_person`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from datasets.regions import PARTS
from datasets.synthetic.identity import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity

SUPERSAMPLE = 2
OCCLUSION_PROBABILITY = 0.3
BUILD_WIDTH = {"slim": 0.85, "average": 1.0, "heavy": 1.2}
HEAD_Y, HEAD_RX, HEAD_RY = 0.075, 0.058, 0.066
SHOULDER_Y, WAIST_Y, ANKLE_Y, SOLE_Y = 0.155, 0.50, 0.925, 0.99
LEG_DX, LEG_HALF, ARM_WIDTH = 0.06, 0.05, 0.06
LOWER_HEM = {"shorts": 0.68, "skirt": 0.72, "long skirt": 0.9}
COAT_HEM = 0.62  # above every lower hem, so shorts and skirts show below a coat
Colour = tuple[int, int, int]
UNLABELLED, SKIN = 0, 1  # label-map values of background / occluder and of skin; parts follow
PART_LABELS = {part: SKIN + 1 + index for index, part in enumerate(PARTS)}


class _Canvas:
    """``ImageDraw`` calls (``ellipse``, ``polygon``, ...) painted on the image and, with a label map, painted
    again there with the label of ``self.part`` (a part name, or ``SKIN`` / ``UNLABELLED``)."""

    def __init__(self, image: Image.Image, labels: Image.Image | None) -> None:
        self._image = ImageDraw.Draw(image)
        self._labels = None if labels is None else ImageDraw.Draw(labels)
        self.part: str | int = UNLABELLED

    def __getattr__(self, shape: str):
        paint = getattr(self._image, shape)
        if self._labels is None:
            return paint
        label = getattr(self._labels, shape)

        def paint_both(*args, fill, **kwargs):
            paint(*args, fill=fill, **kwargs)
            label(*args, fill=PART_LABELS.get(self.part, self.part), **kwargs)
        return paint_both


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(min(255, c * factor)) for c in colour)


def _contrast(colour: Colour) -> Colour:
    """A darker or lighter version of the same colour, for patterns and garment details."""
    if sum(colour) > 3 * 140:
        return _shade(colour, 0.55)
    return tuple(int(c + 0.55 * (255 - c)) for c in colour)


@dataclass(frozen=True)
class _Frame:
    """Maps body coordinates (dx, fy) in units of the figure height to canvas pixels."""

    cx: float
    top: float
    u: float
    shoulder: float  # half width of the shoulders, in u
    hip: float  # half width of the hips, in u

    def x(self, dx: float) -> float:
        return self.cx + dx * self.u

    def y(self, fy: float) -> float:
        return self.top + fy * self.u

    def box(self, dx0: float, fy0: float, dx1: float, fy1: float) -> tuple[float, float, float, float]:
        return (self.x(dx0), self.y(fy0), self.x(dx1), self.y(fy1))

    def poly(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(self.x(dx), self.y(fy)) for dx, fy in points]

    def px(self, length: float) -> int:
        return max(1, round(length * self.u))


def render_person(identity: Identity, rng: np.random.Generator, size: tuple[int, int] = (128, 64)) -> Image.Image:
    """Draws ``identity`` as an RGB image with random viewing conditions.

    Args:
        identity: the person; a bag on their ``left`` appears on the image's right (they face the camera).
        rng: draws background, placement, lighting and occlusion.
        size: output ``(height, width)`` in pixels.
    """
    return _render(identity, rng, size, with_regions=False)[0]


def render_person_with_regions(identity: Identity, rng: np.random.Generator,
                               size: tuple[int, int] = (128, 64)) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """:func:`render_person` plus the visible region of each part the person has: ``{part: (H, W) bool}``
    (parts of :data:`datasets.regions.PARTS` drawn and not fully covered; a sub-sampled pixel of the label map)."""
    image, labels = _render(identity, rng, size, with_regions=True)
    label_array = np.asarray(labels)  # (H, W) uint8
    regions = {part: label_array == PART_LABELS[part] for part in PARTS}
    return image, {part: mask for part, mask in regions.items() if mask.any()}


def _render(identity: Identity, rng: np.random.Generator, size: tuple[int, int],
            with_regions: bool) -> tuple[Image.Image, Image.Image | None]:
    """The image and, ``with_regions``, its (H, W) label map."""
    height, width = size
    canvas_h, canvas_w = height * SUPERSAMPLE, width * SUPERSAMPLE
    image = _background(rng, canvas_w, canvas_h)
    labels = Image.new("L", (canvas_w, canvas_h), UNLABELLED) if with_regions else None
    draw = _Canvas(image, labels)
    u = canvas_h * rng.uniform(0.78, 0.94)
    build = BUILD_WIDTH[identity.build]
    woman = identity.gender == "woman"
    frame = _Frame(cx=canvas_w * (0.5 + rng.uniform(-0.1, 0.1)), top=(canvas_h - u) * rng.uniform(0.3, 0.7),
                   u=u, shoulder=0.15 * build * (0.9 if woman else 1.0), hip=0.12 * build * (1.08 if woman else 1.0))
    _draw_figure(draw, identity, frame)
    if rng.random() < OCCLUSION_PROBABILITY:
        draw.part = UNLABELLED
        _occlude(draw, rng, frame, canvas_w)
    reduced = None if labels is None else labels.resize((width, height), Image.Resampling.NEAREST)
    return _relight(image.reduce(SUPERSAMPLE), rng), reduced


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A vertical two-colour gradient with a few random shapes (clutter)."""
    top, bottom = rng.integers(40, 220, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    column = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)  # (H, 1, 3)
    image = Image.fromarray(column).resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2) * height)
        colour = tuple(int(0.6 * c + 0.4 * 128) for c in rng.integers(0, 256, 3))  # muted, so people stand out
        shape = int(rng.integers(3))
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 8)))
    return image


def _draw_figure(draw: _Canvas, person: Identity, f: _Frame) -> None:
    """Paints the figure back to front: backpack, hood, legs and lower garment, shoes, torso, arms, head, bags."""
    skin = SKIN_TONES[person.skin_tone]
    upper = COLOURS[person.upper_colour]
    hair = HAIR_COLOURS[person.hair_colour]
    if person.bag == "backpack":
        draw.part = "bag"
        draw.rounded_rectangle(f.box(-f.shoulder - 0.02, 0.12, f.shoulder + 0.02, 0.47), f.px(0.03),
                               fill=COLOURS[person.bag_colour])
    if person.hair_length == "long":
        draw.part = "hair"
        draw.rounded_rectangle(f.box(-0.08, 0.04, 0.08, 0.26), f.px(0.03), fill=hair)
    if person.upper == "hoodie":
        draw.part = "upper"
        draw.ellipse(f.box(-0.085, 0.09, 0.085, 0.2), fill=_shade(upper, 0.75))
    _draw_lower(draw, person, f, skin)
    shoes = COLOURS[person.shoes_colour]
    draw.part = "shoes"
    for side in (-1, 1):
        draw.ellipse(f.box(side * LEG_DX - 0.045, ANKLE_Y, side * LEG_DX + 0.045, SOLE_Y), fill=shoes)
    _draw_torso(draw, person, f, upper, skin)
    _draw_arms(draw, person, f, upper, skin)
    _draw_head(draw, person, f, skin, hair)
    _draw_bag_front(draw, person, f)


def _leg(side: int, f: _Frame, bottom: float) -> list[tuple[float, float]]:
    """One leg from the hip down to ``bottom`` (a trapezoid narrowing to the ankle)."""
    t = (bottom - WAIST_Y) / (ANKLE_Y - WAIST_Y)
    outer = f.hip + t * (LEG_DX + LEG_HALF - f.hip)
    inner = t * (LEG_DX - LEG_HALF)
    return f.poly([(0, WAIST_Y), (side * f.hip, WAIST_Y), (side * outer, bottom), (side * inner, bottom)])


def _draw_lower(draw: _Canvas, person: Identity, f: _Frame, skin: Colour) -> None:
    lower = COLOURS[person.lower_colour]
    draw.part = "lower" if person.lower == "trousers" else SKIN
    for side in (-1, 1):
        draw.polygon(_leg(side, f, ANKLE_Y), fill=lower if person.lower == "trousers" else skin)
    draw.part = "lower"
    if person.lower == "shorts":
        for side in (-1, 1):
            draw.polygon(_leg(side, f, LOWER_HEM["shorts"]), fill=lower)
    elif person.lower in ("skirt", "long skirt"):
        hem, flare = LOWER_HEM[person.lower], 0.05 if person.lower == "skirt" else 0.08
        draw.polygon(f.poly([(-f.hip, WAIST_Y - 0.02), (f.hip, WAIST_Y - 0.02), (f.hip + flare, hem),
                             (-f.hip - flare, hem)]), fill=lower)


def _draw_torso(draw: _Canvas, person: Identity, f: _Frame, upper: Colour, skin: Colour) -> None:
    """Torso in the garment colour, its pattern, and the details that tell garment types apart."""
    draw.part = "upper"
    bottom, flare = (COAT_HEM, 0.03) if person.upper == "coat" else (WAIST_Y + 0.02, 0.0)
    draw.polygon(f.poly([(-f.shoulder, SHOULDER_Y), (f.shoulder, SHOULDER_Y), (f.hip + flare, bottom),
                         (-f.hip - flare, bottom)]), fill=upper)
    detail, inner = _contrast(upper), min(f.shoulder, f.hip) - 0.015

    def half_width(fy: float) -> float:
        t = (fy - SHOULDER_Y) / (bottom - SHOULDER_Y)
        return f.shoulder + t * (f.hip + flare - f.shoulder) - 0.01

    if person.upper_pattern in ("striped", "checked"):
        for fy in np.arange(SHOULDER_Y + 0.03, bottom - 0.01, 0.045):
            draw.line(f.poly([(-half_width(fy), fy), (half_width(fy), fy)]), fill=detail, width=f.px(0.016))
    if person.upper_pattern == "checked":
        for dx in np.arange(-inner + 0.02, inner, 0.05):
            draw.line(f.poly([(dx, SHOULDER_Y + 0.01), (dx, bottom - 0.01)]), fill=detail, width=f.px(0.012))
    if person.upper_pattern == "dotted":
        for fy in np.arange(SHOULDER_Y + 0.035, bottom - 0.02, 0.05):
            for dx in np.arange(-inner + 0.02, inner, 0.05):
                draw.ellipse(f.box(dx - 0.011, fy - 0.011, dx + 0.011, fy + 0.011), fill=detail)

    dark = _shade(upper, 0.6)
    if person.upper in ("shirt", "coat"):
        columns = (0.0,) if person.upper == "shirt" else (-0.035, 0.035)
        for dx in columns:
            for fy in np.arange(0.22, bottom - 0.03, 0.07):
                draw.ellipse(f.box(dx - 0.01, fy - 0.01, dx + 0.01, fy + 0.01), fill=dark)
        draw.polygon(f.poly([(-0.05, SHOULDER_Y), (0.0, 0.2), (0.05, SHOULDER_Y)]), fill=_contrast(dark))
    elif person.upper == "jacket":
        draw.line(f.poly([(0.0, SHOULDER_Y), (0.0, bottom)]), fill=dark, width=f.px(0.014))
        draw.polygon(f.poly([(-0.06, SHOULDER_Y), (-0.01, 0.21), (-0.03, SHOULDER_Y)]), fill=dark)
        draw.polygon(f.poly([(0.06, SHOULDER_Y), (0.01, 0.21), (0.03, SHOULDER_Y)]), fill=dark)
    elif person.upper == "hoodie":
        draw.rectangle(f.box(-0.07, 0.39, 0.07, 0.47), fill=dark)
        for dx in (-0.02, 0.02):
            draw.line(f.poly([(dx, SHOULDER_Y), (dx, 0.25)]), fill=(235, 235, 235), width=f.px(0.008))
    elif person.upper == "sweater":
        draw.rectangle(f.box(-f.hip, bottom - 0.04, f.hip, bottom), fill=dark)
        draw.part = SKIN
        draw.polygon(f.poly([(-0.04, SHOULDER_Y), (0.0, 0.21), (0.04, SHOULDER_Y)]), fill=skin)


def _hand_x(f: _Frame, side: int) -> float:
    return side * (max(f.shoulder, f.hip) + 0.04)


def _draw_arms(draw: _Canvas, person: Identity, f: _Frame, upper: Colour, skin: Colour) -> None:
    """Arms hang from the shoulders; a t-shirt leaves the forearms bare."""
    sleeve_end = 0.3 if person.upper == "t-shirt" else 0.46
    cuff = _shade(upper, 0.6) if person.upper == "sweater" else upper
    width = f.px(ARM_WIDTH)
    for side in (-1, 1):
        shoulder = (side * (f.shoulder - ARM_WIDTH / 3), SHOULDER_Y + 0.02)
        hand = (_hand_x(f, side), 0.47)
        elbow = tuple(s + (h - s) * (sleeve_end - shoulder[1]) / (hand[1] - shoulder[1])
                      for s, h in zip(shoulder, hand))
        draw.part = SKIN
        draw.line(f.poly([shoulder, hand]), fill=skin, width=width)
        draw.part = "upper"
        draw.line(f.poly([shoulder, elbow]), fill=upper, width=width)
        if cuff != upper:
            draw.line(f.poly([elbow, (elbow[0] + 0.3 * (hand[0] - elbow[0]), 0.47)]), fill=cuff, width=width)
        draw.ellipse(f.box(shoulder[0] - ARM_WIDTH / 2, SHOULDER_Y, shoulder[0] + ARM_WIDTH / 2,
                           SHOULDER_Y + ARM_WIDTH), fill=upper)
        draw.part = SKIN
        draw.ellipse(f.box(hand[0] - 0.025, 0.46, hand[0] + 0.025, 0.51), fill=skin)


def _draw_head(draw: _Canvas, person: Identity, f: _Frame, skin: Colour, hair: Colour) -> None:
    """Neck, face, hair (long hair falls in front of the shoulders) and the hat."""
    draw.part = SKIN
    draw.rectangle(f.box(-0.03, 0.1, 0.03, SHOULDER_Y + 0.01), fill=skin)
    head = f.box(-HEAD_RX, HEAD_Y - HEAD_RY, HEAD_RX, HEAD_Y + HEAD_RY)
    draw.ellipse(head, fill=skin)
    for dx in (-0.022, 0.022):
        draw.ellipse(f.box(dx - 0.008, 0.08, dx + 0.008, 0.092), fill=(30, 25, 25))
    draw.part = "hair"
    hair_box = f.box(-HEAD_RX - 0.006, HEAD_Y - HEAD_RY - 0.006, HEAD_RX + 0.006, HEAD_Y + HEAD_RY)
    draw.chord(hair_box, 190, 350, fill=hair)
    for side in (-1, 1):  # hair at the temples stays visible under any hat
        draw.rectangle(f.box(min(side * (HEAD_RX - 0.012), side * (HEAD_RX + 0.006)), HEAD_Y - 0.03,
                             max(side * (HEAD_RX - 0.012), side * (HEAD_RX + 0.006)), HEAD_Y + 0.012), fill=hair)
    if person.hair_length == "long":
        for side in (-1, 1):
            draw.rectangle(f.box(min(side * 0.045, side * 0.08), 0.06, max(side * 0.045, side * 0.08), 0.25),
                           fill=hair)
    if person.hat is None:
        return
    hat = COLOURS[person.hat_colour]
    draw.part = "hat"
    crown = f.box(-HEAD_RX - 0.008, HEAD_Y - HEAD_RY - 0.01, HEAD_RX + 0.008, HEAD_Y + HEAD_RY - 0.02)
    if person.hat == "cap":
        draw.chord(crown, 180, 360, fill=hat)
        draw.ellipse(f.box(-0.08, 0.045, 0.08, 0.068), fill=_shade(hat, 0.7))
    elif person.hat == "beanie":
        draw.chord(f.box(-HEAD_RX - 0.008, -0.02, HEAD_RX + 0.008, 0.11), 180, 360, fill=hat)
        draw.rectangle(f.box(-HEAD_RX - 0.008, 0.03, HEAD_RX + 0.008, 0.05), fill=_contrast(hat))
        draw.ellipse(f.box(-0.016, -0.03, 0.016, 0.0), fill=hat)
    else:
        draw.chord(crown, 180, 360, fill=hat)
        draw.ellipse(f.box(-0.13, 0.025, 0.13, 0.06), fill=hat)
        draw.rectangle(f.box(-HEAD_RX, 0.015, HEAD_RX, 0.03), fill=_contrast(hat))


def _draw_bag_front(draw: _Canvas, person: Identity, f: _Frame) -> None:
    """Backpack straps, a handbag below the hand, or a shoulder bag on a strap across the chest."""
    if person.bag is None:
        return
    draw.part = "bag"
    colour = COLOURS[person.bag_colour]
    side = 1 if person.bag_side == "left" else -1  # the person's left is the image's right
    if person.bag == "backpack":
        for dx in (-0.08, 0.08):
            draw.line(f.poly([(dx, SHOULDER_Y), (dx * 1.1, 0.4)]), fill=colour, width=f.px(0.022))
    elif person.bag == "handbag":
        hand = _hand_x(f, side)
        draw.line(f.poly([(hand - 0.03, 0.52), (hand, 0.48), (hand + 0.03, 0.52)]), fill=colour, width=f.px(0.012))
        draw.rectangle(f.box(hand - 0.05, 0.52, hand + 0.05, 0.62), fill=colour)
    else:
        outer = side * (f.hip + 0.1)
        draw.line(f.poly([(-side * 0.09, SHOULDER_Y), (side * f.hip, 0.45)]), fill=colour, width=f.px(0.018))
        draw.rectangle(f.box(min(side * (f.hip - 0.03), outer), 0.44, max(side * (f.hip - 0.03), outer), 0.56),
                       fill=colour)


def _occlude(draw: _Canvas, rng: np.random.Generator, f: _Frame, canvas_w: int) -> None:
    """A vertical (pole, passer-by) or horizontal (railing, car) block over part of the body."""
    colour = tuple(int(c) for c in rng.integers(20, 235, 3))
    if rng.random() < 0.5:
        bar_width = canvas_w * rng.uniform(0.15, 0.3)
        x0 = f.cx + rng.choice((-1, 1)) * f.u * rng.uniform(0.08, 0.2) - bar_width / 2
        y0 = f.y(rng.uniform(-0.1, 0.5))
        draw.rectangle((x0, y0, x0 + bar_width, f.y(1.05)), fill=colour)
    else:
        y0 = f.y(rng.uniform(0.45, 0.8))
        draw.rectangle((0, y0, canvas_w, y0 + f.u * rng.uniform(0.1, 0.25)), fill=colour)


def _relight(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random contrast (about the mean) then brightness: x ← clip(((x − m)·c + m)·b)."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(0.8, 1.2)
    mean = pixels.mean()
    pixels = ((pixels - mean) * contrast + mean) * brightness
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
