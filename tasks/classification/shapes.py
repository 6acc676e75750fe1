"""A generated 32x32 classification set of ten shapes on textured backgrounds.

Each image holds one centred shape of a class from `SHAPE_CLASSES`, drawn at
2x resolution and reduced with an area filter (anti-aliased edges), under
nuisances that make the set hard enough to separate small networks from
larger ones: a random scale (40-85% of the image), a position jitter of up to
15%, a rotation jitter of +-20 degrees (so `plus` and `x_cross`, `square`
and `diamond` stay distinct classes), a filled (70%) or outlined body, a
random colour (15% of them close to the background's mean, so of low
contrast), a textured background (gradient, stripes or checks and noise, as
the detection task's shapes), up to one distractor blob behind the shape and,
on 30% of the images, a small square occluding part of it. Pixel noise and a
random brightness change are added after the reduction.

Every image is drawn from its own seeded generator (`seed`, split, index), so
a split is the same whatever its size and whatever else was drawn before.
"""

from __future__ import annotations

import math

import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle", "plus", "diamond", "star", "hexagon", "ring", "x_cross",
                 "half_disc")
SPLITS = ("train", "val", "test")
_SUPER = 2  # drawn at 2x, reduced by area averaging


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour gradient + sinusoidal stripes or checks + noise, float in [0, 1], HWC."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    angle = rng.uniform(0, math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle))[..., None]
    img = c0 * (1 - t) + c1 * t
    period = rng.uniform(3, 12) * size / 32
    phase = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        direction = rng.uniform(0, math.pi)
        u = (xx * math.cos(direction) + yy * math.sin(direction)) * size
        pattern = np.sin(2 * math.pi * u / period + phase)
    else:
        pattern = np.sign(np.sin(2 * math.pi * xx * size / period + phase)) * \
            np.sign(np.sin(2 * math.pi * yy * size / period))
    img = img + rng.uniform(0.02, 0.10) * pattern[..., None] + rng.normal(0, 0.03, (size, size, 3))
    return np.clip(img, 0, 1)


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return (points - centre) @ np.array([[c, s], [-s, c]]) + centre


def _polygon(n: int, radius: float, centre: np.ndarray, start: float) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(n) / n
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _shape_polygons(cls: str, centre: np.ndarray, r: float, angle: float) -> list[np.ndarray]:
    """The polygons (unit: pixels) of a shape of radius r, rotated by angle; circles return []."""
    if cls == "square":
        polys = [_polygon(4, r * 0.95, centre, math.pi / 4)]
    elif cls == "diamond":
        polys = [_polygon(4, r, centre, 0.0)]
    elif cls == "triangle":
        polys = [_polygon(3, r, centre, -math.pi / 2)]
    elif cls == "hexagon":
        polys = [_polygon(6, r, centre, 0.0)]
    elif cls == "star":
        outer = _polygon(5, r, centre, -math.pi / 2)
        inner = _polygon(5, r * 0.42, centre, -math.pi / 2 + math.pi / 5)
        polys = [np.stack([outer, inner], 1).reshape(-1, 2)]
    elif cls in ("plus", "x_cross"):
        t = r * 0.3
        bar_h = np.array([[-r, -t], [r, -t], [r, t], [-r, t]]) + centre
        bar_v = np.array([[-t, -r], [t, -r], [t, r], [-t, r]]) + centre
        polys = [bar_h, bar_v]
        if cls == "x_cross":
            angle += math.pi / 4
    elif cls == "half_disc":
        a = np.linspace(0, math.pi, 24)
        polys = [centre + r * np.stack([np.cos(a), -np.sin(a)], 1) + np.array([0, r * 0.4])]
    else:
        return []
    return [_rotate(p, angle, centre) for p in polys]


def _draw_shape(draw, cls: str, centre: np.ndarray, r: float, angle: float, colour: tuple, outline: int) -> None:
    """Filled when `outline` is 0, else outlined with that width (PIL ImageDraw)."""
    cx, cy = centre
    box = [cx - r, cy - r, cx + r, cy + r]
    if cls == "circle":
        if outline:
            draw.ellipse(box, outline=colour, width=outline)
        else:
            draw.ellipse(box, fill=colour)
        return
    if cls == "ring":
        draw.ellipse(box, outline=colour, width=max(outline, int(r * 0.35)))
        return
    for poly in _shape_polygons(cls, centre, r, angle):
        points = [tuple(p) for p in poly]
        if outline:
            draw.line(points + [points[0]], fill=colour, width=outline, joint="curve")
        else:
            draw.polygon(points, fill=colour)


def draw_image(seed: int, split: int, index: int, label: int, size: int = 32) -> np.ndarray:
    """One uint8 HWC image of class `label`, a pure function of its arguments."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, split, index, label])
    big = size * _SUPER
    background = _background(rng, big)
    img = Image.fromarray((background * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    # distractors first, so the shape usually (not always) lies on top
    for _ in range(int(rng.integers(0, 2))):
        d_r = rng.uniform(0.06, 0.14) * big
        d_c = rng.uniform(0.1, 0.9, 2) * big
        d_colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([d_c[0] - d_r, d_c[1] - d_r * 0.6, d_c[0] + d_r, d_c[1] + d_r * 0.6], fill=d_colour)
    r = rng.uniform(0.20, 0.425) * big
    centre = big / 2 + rng.uniform(-0.15, 0.15, 2) * big
    angle = math.radians(rng.uniform(-20, 20))
    mean_bg = background.mean((0, 1))
    if rng.random() < 0.15:  # low contrast: a colour near the background's mean
        colour = np.clip(mean_bg + rng.uniform(-0.25, 0.25, 3), 0, 1)
    else:
        colour = rng.uniform(0, 1, 3)
    outline = int(rng.integers(2, 5)) * _SUPER // 2 if rng.random() < 0.3 else 0
    _draw_shape(draw, SHAPE_CLASSES[label], centre, r, angle, tuple(int(v * 255) for v in colour), outline)
    if rng.random() < 0.3:  # an occluding distractor
        d_r = rng.uniform(0.06, 0.12) * big
        d_c = centre + rng.uniform(-1, 1, 2) * r
        draw.rectangle([d_c[0] - d_r, d_c[1] - d_r, d_c[0] + d_r, d_c[1] + d_r],
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    small = small * rng.uniform(0.7, 1.2) + rng.normal(0, rng.uniform(0.01, 0.06), small.shape)
    return (np.clip(small, 0, 1) * 255).round().astype(np.uint8)


def generate(counts: dict[str, int], seed: int = 0, size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Class-balanced splits: `counts[split]` images each, labels cycling through the classes."""
    out = {}
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        labels = np.arange(n, dtype=np.int64) % len(SHAPE_CLASSES)
        images = np.stack([draw_image(seed, split_index, i, int(y), size) for i, y in enumerate(labels)])
        out[split] = (images, labels)
    return out


__all__ = ["SHAPE_CLASSES", "draw_image", "generate"]
