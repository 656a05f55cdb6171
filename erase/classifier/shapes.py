"""Image classification on the concept world's renderer: the built-in stand-in for CIFAR-10.

``shapes``: 6 classes (circle, square, triangle, star, heart, cross), each image in a random
colour of 6 and style of 3, at a random position and size on a random light background;
``shapes-colours``: 36 classes (shape x colour), random style. 32 x 32 RGB in [0, 1], generated
on the fly by :func:`erase.toyworld.render.render` (about 0.4 ms an image), deterministic for a
seed: the training and test images are drawn from different seeds, so none is shared.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from erase.errors import EraseError

KINDS = ("shapes", "shapes-colours")
TEST_FRACTION = 0.2


@lru_cache(maxsize=4)
def _render(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from erase.toyworld.concepts import COLOURS, SHAPES, STYLES
    from erase.toyworld.render import render

    rng = np.random.default_rng([seed, 31])
    X = np.empty((n, 3, 32, 32), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        s, c, st = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))), int(rng.integers(len(STYLES)))
        X[i] = np.asarray(render(SHAPES[s], COLOURS[c], STYLES[st], rng), dtype=np.float32).transpose(2, 0, 1) / 255.0
        y[i] = s if kind == "shapes" else s * len(COLOURS) + c
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_shapes(kind: str = "shapes", n_samples: int = 24000, seed: int = 0):
    """A Dataset of ``n_samples`` images (80 % training, 20 % test)."""
    from erase.classifier.data import Dataset

    if kind not in KINDS:
        raise EraseError(f"unknown image dataset {kind!r}; choose from {', '.join(KINDS)}")
    if n_samples < 10:
        raise EraseError(f"{kind} needs at least 10 samples, got {n_samples}")
    n_test = max(1, int(round(TEST_FRACTION * n_samples)))
    Xtr, ytr = _render(kind, n_samples - n_test, 2 * seed)
    Xte, yte = _render(kind, n_test, 2 * seed + 1)
    K = 6 if kind == "shapes" else 36
    return Dataset(kind, "classification", Xtr.copy(), ytr.copy(), Xte.copy(), yte.copy(), n_classes=K, input_range=(0.0, 1.0))
