"""Drawing primitives of the shapes world: colours, background layers, the water band, the object
classes (shape + texture) and irregular distractor blobs.

Everything here is config-free: functions take a `numpy.random.Generator` and plain numbers and return
float32 arrays with RGB in [0, 1]. How they are composed into a scene, and every knob, lives in
`pipeline.data.shapes`. Object functions work on a `Frame`, the object's bounding crop expressed in
the object's own rotated coordinates measured in radii, so drawing costs O(object area), not O(image).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Rng = np.random.Generator
F32 = np.float32

#: how far (in radii) an object's drawing may reach from its centre; frames cover this square
FRAME_EXTENT = 1.15


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """One colour: (3,) float32 RGB in [0, 1]; hue wraps, saturation and value are clipped."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), F32)


def random_colour(rng: Rng, sat: tuple[float, float] = (0.1, 0.9),
                  val: tuple[float, float] = (0.15, 0.95)) -> np.ndarray:
    """A colour of random hue, saturation in `sat` and value in `val`."""
    return hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def blend(img: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """img (h, w, 3) towards colour (3,) or (h, w, 3) by weight (h, w) in [0, 1]."""
    w = weight[..., None]
    return img * (1.0 - w) + colour * w


def smooth_noise(rng: Rng, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 value noise in [0, 1]: a (cells+1)^2 random grid, smoothstep-interpolated."""
    grid = rng.random((cells + 1, cells + 1), dtype=F32)
    x = np.linspace(0.0, cells, size, dtype=F32)
    i0 = np.minimum(x.astype(np.int64), cells - 1)
    f = x - i0
    f = f * f * (3.0 - 2.0 * f)
    top = grid[np.ix_(i0, i0)] * (1 - f) + grid[np.ix_(i0, i0 + 1)] * f  # rows i0, interpolated along x
    bottom = grid[np.ix_(i0 + 1, i0)] * (1 - f) + grid[np.ix_(i0 + 1, i0 + 1)] * f
    return top * (1 - f)[:, None] + bottom * f[:, None]


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx), each (size, size) float32: the pixel centres."""
    c = np.arange(size, dtype=F32) + 0.5
    return np.broadcast_to(c[:, None], (size, size)), np.broadcast_to(c[None, :], (size, size))


# ----------------------------------------------------------------------------------------------------
# background


def background(rng: Rng, size: int, *, stripe_prob: float, n_clutter: int) -> np.ndarray:
    """(size, size, 3) clutter: a two-colour gradient, low-frequency colour noise, optional stripes,
    then `n_clutter` thin lines and small squares in random colours."""
    yy, xx = pixel_grid(size)
    half = size / 2.0
    angle = rng.uniform(0, 2 * math.pi)
    t = 0.5 + ((xx - half) * math.cos(angle) + (yy - half) * math.sin(angle)) / (size * 1.42)
    img = blend(np.broadcast_to(random_colour(rng, (0.1, 0.8), (0.2, 0.9)), (size, size, 3)),
                random_colour(rng, (0.1, 0.8), (0.2, 0.9)), t)
    noise = smooth_noise(rng, size, int(rng.integers(3, 8)))
    img = blend(img, random_colour(rng, (0.2, 0.9), (0.2, 0.9)), rng.uniform(0.2, 0.6) * noise)
    if rng.random() < stripe_prob:
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 10) * 2 * math.pi / size  # 3..10 stripes across the image
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        on = (np.sin(freq * phase + rng.uniform(0, 2 * math.pi)) > rng.uniform(-0.3, 0.6)).astype(F32)
        img = blend(img, random_colour(rng, (0.1, 0.9), (0.1, 1.0)), rng.uniform(0.2, 0.6) * on)
    img = np.ascontiguousarray(img, dtype=F32)
    line_half_width = max(0.6, size / 96)
    for _ in range(n_clutter):
        colour = random_colour(rng, (0.2, 1.0), (0.2, 1.0))
        if rng.random() < 0.5:  # a thin line across the image
            angle = rng.uniform(0, math.pi)
            offset = rng.uniform(-half, half)
            dist = (xx - half) * math.cos(angle) + (yy - half) * math.sin(angle) - offset
            img[np.abs(dist) < line_half_width] = colour
        else:  # a small square
            cx, cy = rng.uniform(0, size, 2)
            h = rng.uniform(1, max(size / 16, 1.5))
            img[max(int(cy - h + 0.5), 0):max(int(cy + h + 0.5), 0),
                max(int(cx - h + 0.5), 0):max(int(cx + h + 0.5), 0)] = colour
    return img


def water_band(rng: Rng, size: int, top: float) -> tuple[np.ndarray, np.ndarray]:
    """The water region below a gently waving waterline at row `top`: (mask (size, size) bool,
    colour (size, size, 3)). Blue-green, darker with depth, with horizontal wavy ripple highlights."""
    yy, xx = pixel_grid(size)
    waterline = top + rng.uniform(0, 0.02) * size * np.sin(
        xx[0] * (2 * math.pi / (size * rng.uniform(0.5, 1.5))) + rng.uniform(0, 2 * math.pi))
    mask = yy >= waterline[None, :]
    hue = rng.uniform(0.48, 0.64)
    shallow = hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.3, 0.7), rng.uniform(0.55, 0.85))
    deep = hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.45))
    depth = np.clip((yy - top) / max(size - top, 1.0), 0.0, 1.0)
    colour = blend(np.broadcast_to(shallow, (size, size, 3)), deep, depth)
    period = max(size * rng.uniform(0.04, 0.08), 2.5)
    wobble = rng.uniform(1.0, 2.5) * np.sin(xx * (2 * math.pi / (size * rng.uniform(0.15, 0.35)))
                                            + rng.uniform(0, 2 * math.pi))
    ripple = np.sin(yy * (2 * math.pi / period) + wobble) > rng.uniform(0.5, 0.8)
    colour = blend(colour, hsv(hue, rng.uniform(0.05, 0.25), rng.uniform(0.85, 1.0)), 0.55 * ripple.astype(F32))
    colour *= (0.85 + 0.3 * smooth_noise(rng, size, int(rng.integers(4, 9))))[..., None]
    return mask, colour


# ----------------------------------------------------------------------------------------------------
# object frames, classes and blobs


@dataclass(frozen=True)
class Frame:
    """An object's bounding crop: image rows/cols, and per-pixel coordinates in the object's own
    rotated frame measured in radii (u along the object's x axis, v along its y axis, y pointing down)."""
    rows: slice
    cols: slice
    u: np.ndarray   # (h, w) float32
    v: np.ndarray   # (h, w) float32
    px: float       # one pixel, in radii (1 / radius in pixels): lets textures keep details >= a few pixels

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape


def make_frame(size: int, cx: float, cy: float, radius: float, angle: float, mirror: bool = False) -> Frame | None:
    """The frame of an object centred at (cx, cy) px, `radius` px, rotated by `angle`; None if off-image."""
    reach = radius * FRAME_EXTENT
    y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)), size)
    x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)), size)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = ((np.arange(y0, y1, dtype=F32) + 0.5 - cy) / radius)[:, None]
    dx = ((np.arange(x0, x1, dtype=F32) + 0.5 - cx) / radius)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy).astype(F32)
    v = (-s * dx + c * dy).astype(F32)
    if mirror:
        u = -u
    return Frame(slice(y0, y1), slice(x0, x1), u, v, 1.0 / radius)


def _solid(frame: Frame, colour: np.ndarray) -> np.ndarray:
    out = np.empty(frame.shape + (3,), F32)
    out[...] = colour
    return out


Draw = Callable[[Frame, Rng, float], "tuple[np.ndarray, np.ndarray]"]


def _disk(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """A filled circle covered in dark spots of its own hue."""
    mask = f.u * f.u + f.v * f.v < 1.0
    colour = _solid(f, hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)))
    spot = hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.4))
    for _ in range(int(rng.integers(3, 9))):
        su, sv = rng.uniform(-0.8, 0.8, 2)
        r = max(rng.uniform(0.12, 0.25), 1.2 * f.px)
        colour[(f.u - su) ** 2 + (f.v - sv) ** 2 < r * r] = spot
    return mask, colour


def _bar(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """A long thin rectangle striped along its long axis."""
    half_width = max(rng.uniform(0.2, 0.33), 1.5 * f.px)
    mask = (np.abs(f.u) < 1.0) & (np.abs(f.v) < half_width)
    period = max(rng.uniform(0.18, 0.3), 3 * f.px)
    stripes = 0.5 + 0.5 * np.sin(f.v * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
    base = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return mask, base * (0.55 + 0.45 * stripes)[..., None]


def _ring(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """An annulus shaded like a tube (bright along its middle circle)."""
    r = np.sqrt(f.u * f.u + f.v * f.v)
    inner = min(rng.uniform(0.45, 0.65), 1.0 - 2.0 * f.px)
    mask = (r < 1.0) & (r > inner)
    shade = np.cos((r - (1.0 + inner) / 2) * (math.pi / (1.0 - inner)))
    base = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return mask, base * (0.6 + 0.4 * np.clip(shade, 0.0, 1.0))[..., None]


def _triangle(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """An equilateral triangle with a linear gradient into a neighbouring hue."""
    mask = np.ones(f.shape, bool)
    for k in range(3):
        a = 2 * math.pi * k / 3
        mask &= f.u * math.cos(a) + f.v * math.sin(a) < 0.5
    start = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    end = hsv(hue + rng.uniform(0.05, 0.15), rng.uniform(0.5, 1.0), rng.uniform(0.3, 0.9))
    return mask, blend(_solid(f, start), end, np.clip((f.u + 1.0) / 1.5, 0.0, 1.0))


def _cross(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """A plus sign with a checkerboard of its hue and a pale tint of it."""
    w = max(rng.uniform(0.2, 0.3), 1.5 * f.px)
    au, av = np.abs(f.u), np.abs(f.v)
    mask = ((au < 1.0) & (av < w)) | ((av < 1.0) & (au < w))
    period = max(rng.uniform(0.25, 0.4), 2.5 * f.px)
    checker = ((np.floor(f.u / period) + np.floor(f.v / period)) % 2).astype(F32)
    dark = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    pale = hsv(hue, rng.uniform(0.1, 0.4), rng.uniform(0.8, 1.0))
    return mask, blend(_solid(f, dark), pale, checker)


def _star(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """A five-pointed star with per-pixel speckle."""
    inner = rng.uniform(0.38, 0.5)
    sector = np.arctan2(f.v, f.u) * (5 / (2 * math.pi))  # 5 tips per turn
    tip = np.abs((sector % 1.0) - 0.5) * 2  # 1 at a tip, 0 between two
    radius = inner + (1.0 - inner) * tip
    mask = f.u * f.u + f.v * f.v < radius * radius
    base = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    speckle = rng.random(f.shape, dtype=F32)
    return mask, base * (0.5 + 0.7 * speckle)[..., None]


def _boat(f: Frame, rng: Rng, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """A sailing boat, upright in its frame: a planked hull tapering downwards below a mast with a pale
    triangular sail (sometimes a jib too). The hull spans v in [deck, 0.5]; its middle (v ~ 0.3) is the
    waterline the scene composer places on the water band."""
    u, v = f.u, f.v
    deck = rng.uniform(0.1, 0.2)
    top_half = rng.uniform(0.75, 0.95)
    bottom_half = top_half * rng.uniform(0.5, 0.7)
    along = np.clip((v - deck) / (0.5 - deck), 0.0, 1.0)
    hull = (v >= deck) & (v < 0.5) & (np.abs(u) < top_half + (bottom_half - top_half) * along)
    mast_half = max(0.05, 0.6 * f.px)
    mast = (np.abs(u) < mast_half) & (v > -0.95) & (v < deck)
    sail_w = rng.uniform(0.5, 0.8)
    sail_foot = deck - 0.05
    sail = (u > mast_half) & (v < sail_foot) & ((u - mast_half) / sail_w < (v + 0.9) / (sail_foot + 0.9))
    if rng.random() < 0.5:  # a jib on the other side of the mast
        jib_w = rng.uniform(0.3, 0.55)
        sail |= (u < -mast_half) & (v < sail_foot) & ((-u - mast_half) / jib_w < (v + 0.7) / (sail_foot + 0.7))
    hull_colour = hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.75))
    plank = max(rng.uniform(0.1, 0.16), 2.5 * f.px)
    seams = (((v - deck) / plank) % 1.0 < 0.3).astype(F32)
    colour = blend(_solid(f, hull_colour), hull_colour * 0.45, seams)
    sail_colour = hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.03, 0.25), rng.uniform(0.85, 1.0))
    above = v < deck
    colour[above] = sail_colour
    colour[mast] = hsv(hue, 0.5, 0.2)
    return hull | mast | sail, colour


@dataclass(frozen=True)
class ObjectClass:
    """One foreground class: its name, hue centre (instances jitter around it) and drawing function."""
    name: str
    hue: float
    draw: Draw
    description: str


# hue centres spread round the wheel so that, with the per-instance jitter, neighbouring ranges overlap
OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("disk", 0.03, _disk, "filled circle; dark same-hue spots; red"),
    ObjectClass("bar", 0.62, _bar, "long thin rectangle; stripes along its length; blue"),
    ObjectClass("ring", 0.33, _ring, "annulus; tube shading; green"),
    ObjectClass("triangle", 0.82, _triangle, "equilateral triangle; gradient into the next hue; purple"),
    ObjectClass("cross", 0.13, _cross, "plus sign; checkerboard with a pale tint; orange-yellow"),
    ObjectClass("star", 0.50, _star, "five-pointed star; per-pixel speckle; cyan"),
    ObjectClass("boat", 0.08, _boat, "upright hull + mast + pale sail; dark plank seams; brown-orange"),
)


def blob_mask(f: Frame, rng: Rng) -> np.ndarray:
    """An irregular potato shape (radius modulated by 2-, 3- and 4-fold harmonics), within radius 1."""
    theta = np.arctan2(f.v, f.u)
    amps = (rng.uniform(0.12, 0.3), rng.uniform(0.05, 0.2), rng.uniform(0.0, 0.08))
    radius = np.ones(f.shape, F32)
    for k, a in zip((2, 3, 4), amps):
        radius += a * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    radius /= 1.0 + sum(amps)
    return f.u * f.u + f.v * f.v < radius * radius


def flat_blob_colour(f: Frame, rng: Rng, hue: float) -> np.ndarray:
    """A plain colour of `hue`, lit by a soft linear gradient: colour statistics without texture."""
    base = hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    light = np.clip(0.8 + 0.2 * f.u, 0.55, 1.1)
    return base * light[..., None]
