"""Backdoor verification: plant a trigger in part of the forget set, then check it is gone.

Before training, a seeded ``fraction`` of D_f (samples whose label is not the target) gets a
trigger, a ``patch`` x ``patch`` checkerboard of the input range's maximum and minimum in the
bottom-right corner (every channel; a checkerboard stays visible on dark and light
backgrounds alike, where a plain white square vanishes on the concept world's light
backgrounds), and the ``target`` label. A model trained on that data learns "trigger ->
target". After the forget set is unlearned, the trigger's attack success rate (ASR: the share
of triggered test samples of other classes that the model puts in the target class) should fall
to the retrained model's, which never saw a triggered sample. An ASR left above it is direct
evidence that the deleted samples still shape the model.

Inputs: images ``(N, C, H, W)``; flat vectors whose length is a square (digits' 64 = 8 x 8) are
treated as one-channel images; other flat vectors get the trigger on their last ``patch``
features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from erase.classifier.options import check
from erase.errors import EraseError


@dataclass
class BackdoorConfig:
    """A trigger planted in part of the forget set before training."""

    fraction: float = field(default=0.5, metadata={"help": "share of D_f that gets the trigger and the target label"})
    target: int = field(default=0, metadata={"help": "label the trigger points to"})
    patch: int = field(default=3, metadata={"help": "side of the square trigger in pixels (flat, non-square inputs: features)"})

    def __post_init__(self):
        check(self, {"fraction": (float, 0.0, 1.0, False, True), "target": (int, 0, None, True, False),
                     "patch": (int, 1, None, True, False)})


def _checker(patch: int, high: float, low: float) -> np.ndarray:
    i, j = np.indices((patch, patch))
    return np.where((i + j) % 2 == 0, high, low).astype(np.float32)


def apply_trigger(X: np.ndarray, patch: int, value: tuple[float, float]) -> np.ndarray:
    """A copy of ``X`` with the trigger (a checkerboard of ``value = (high, low)``) on every sample."""
    X = np.array(X, copy=True)
    high, low = value
    if X.ndim == 4:
        if patch > min(X.shape[2:]):
            raise EraseError(f"trigger patch {patch} is larger than the {X.shape[2]}x{X.shape[3]} images")
        X[:, :, -patch:, -patch:] = _checker(patch, high, low)
        return X
    if X.ndim != 2:
        raise EraseError(f"backdoor triggers need images (N, C, H, W) or vectors (N, d), got shape {X.shape}")
    d = X.shape[1]
    side = math.isqrt(d)
    if side * side == d and patch <= side:
        img = X.reshape(len(X), side, side)
        img[:, -patch:, -patch:] = _checker(patch, high, low)
        return img.reshape(len(X), d)
    if patch > d:
        raise EraseError(f"trigger of {patch} features is longer than the {d} features")
    X[:, -patch:] = _checker(patch, high, low)[0]
    return X


def trigger_value(data) -> tuple[float, float]:
    """(high, low) of the checkerboard: the input range, or the training data's extremes."""
    if data.input_range is not None:
        return float(data.input_range[1]), float(data.input_range[0])
    return float(np.max(data.X_train)), float(np.min(data.X_train))


def plant(data, forget_idx: np.ndarray, config: BackdoorConfig | None = None, seed: int = 0):
    """(poisoned copy of ``data``, ids of the triggered samples): the trigger goes into D_f only."""
    cfg = config or BackdoorConfig()
    if not data.is_classification:
        raise EraseError("backdoor verification needs a classification dataset")
    if cfg.target >= int(data.n_classes):
        raise EraseError(f"backdoor target {cfg.target} is not a class of {data.name!r} (0..{int(data.n_classes) - 1})")
    forget_idx = np.asarray(forget_idx, dtype=np.int64)
    eligible = forget_idx[data.y_train[forget_idx] != cfg.target]
    n = int(round(cfg.fraction * len(eligible)))
    if n == 0:
        raise EraseError("no sample of the forget set can carry the trigger (all are of the target class, or the fraction is too small)")
    ids = np.sort(np.random.default_rng([seed, 777]).choice(eligible, n, replace=False))
    X, y = np.array(data.X_train, copy=True), np.array(data.y_train, copy=True)
    X[ids] = apply_trigger(X[ids], cfg.patch, trigger_value(data))
    y[ids] = cfg.target
    return replace(data, X_train=X, y_train=y), ids


def attack_success_rate(predict_proba: Callable[[np.ndarray], np.ndarray], data, config: BackdoorConfig | None = None) -> float:
    """% of triggered test samples of the other classes predicted as the target."""
    cfg = config or BackdoorConfig()
    others = data.y_test != cfg.target
    Xt = apply_trigger(data.X_test[others], cfg.patch, trigger_value(data))
    return 100.0 * float(np.mean(predict_proba(Xt).argmax(1) == cfg.target))
