"""The renderer: one coloured object on a plain light background, drawn deterministically.

Shapes are polygons drawn at 4x resolution and box-filtered down, so edges are anti-aliased.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from erase.toyworld.concepts import COLOURS, SHAPES, STYLES, caption, TEMPLATES

SIZE = 32
SUPER = 4  # supersampling factor
RGB = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
STRIPE_PERIOD = 6  # pixels at output size (3 on, 3 off)
OUTLINE = 2  # outline width, pixels at output size


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of the shape (None for the circle, drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + 0.15 * r + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + 0.05 * r + rr * math.sin(a)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 16.5))
        return pts
    if shape == "cross":
        a, b = r, r * 0.36
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
                (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
                (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape {shape!r}")


def _mask(shape: str, cx: float, cy: float, r: float, n: int, outline: int = 0) -> np.ndarray:
    """Boolean mask (n x n) of the filled shape, or of its outline when outline > 0."""
    im = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(im)
    poly = _polygon(shape, cx, cy, r)
    if poly is None:
        box = [cx - r, cy - r, cx + r, cy + r]
        d.ellipse(box, fill=None if outline else 255, outline=255 if outline else None, width=outline or 1)
    elif outline:
        d.line(poly + poly[:2], fill=255, width=outline, joint="curve")
    else:
        d.polygon(poly, fill=255)
    return np.asarray(im) > 127


def render(shape: str, colour: str, style: str, rng_or_seed=0, size: int = SIZE) -> Image.Image:
    """One RGB image of a `colour` `style` `shape` at a random position and size."""
    if shape not in SHAPES or colour not in RGB or style not in STYLES:
        raise ValueError(f"unknown concept in {(shape, colour, style)}")
    rng = _rng(rng_or_seed)
    n = size * SUPER
    r = rng.uniform(0.25, 0.42) * size  # radius, pixels at output size
    margin = r + 1
    cx = rng.uniform(margin, size - margin) * SUPER
    cy = rng.uniform(margin, size - margin) * SUPER
    r *= SUPER
    bg = np.array([rng.integers(228, 256) for _ in range(3)], dtype=np.float32)
    fg = np.clip(np.array(RGB[colour], dtype=np.float32) + rng.integers(-12, 13, size=3), 0, 255)

    width = OUTLINE * SUPER
    if style == "solid":
        m = _mask(shape, cx, cy, r, n)
    elif style == "outlined":
        m = _mask(shape, cx, cy, r, n, outline=width)
    else:  # striped: outline plus horizontal bands inside
        period = STRIPE_PERIOD * SUPER
        phase = rng.integers(0, period)
        rows = ((np.arange(n) + phase) % period) < period // 2
        m = _mask(shape, cx, cy, r, n, outline=width) | (_mask(shape, cx, cy, r, n) & rows[:, None])
    alpha = m.astype(np.float32).reshape(size, SUPER, size, SUPER).mean(axis=(1, 3))[..., None]
    img = bg * (1 - alpha) + fg * alpha
    return Image.fromarray(np.round(img).astype(np.uint8), "RGB")


def sample_dataset(n: int, seed: int = 0, size: int = SIZE):
    """n random images with captions and labels (shape, colour, style indices), deterministic
    for a seed. Returns (list of PIL images, list of captions, int64 array n x 3)."""
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], np.zeros((n, 3), dtype=np.int64)
    for i in range(n):
        s, c, st = (int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))),
                    int(rng.integers(len(STYLES))))
        images.append(render(SHAPES[s], COLOURS[c], STYLES[st], rng, size=size))
        captions.append(caption(SHAPES[s], COLOURS[c], STYLES[st], int(rng.integers(len(TEMPLATES)))))
        labels[i] = (s, c, st)
    return images, captions, labels


def to_array(images) -> np.ndarray:
    """PIL images -> float32 array (n, 3, H, W) in [-1, 1]."""
    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return (a / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()
