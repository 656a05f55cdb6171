"""Retrain from scratch on D \\ D_f: the reference every approximate method is measured against.

The retrained model has the original's architecture, initialisation seed and training
recipe; only the data differ. ``model`` is used as a template: it is copied and every
submodule with ``reset_parameters`` is re-initialised from ``seed``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from erase.classifier.models import TrainConfig, train_classifier
from erase.errors import EraseError


@dataclass
class RetrainConfig:
    """Retrain from scratch on the retain set (same recipe as the original model)."""

    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training recipe of the original model"})

    def __post_init__(self):
        if isinstance(self.train, dict):
            import dataclasses

            names = {f.name for f in dataclasses.fields(TrainConfig)}
            bad = [k for k in self.train if k not in names]
            if bad:
                raise EraseError(f"unknown option train.{bad[0]!r} for retrain; options: {', '.join(sorted(names))}")
            self.train = TrainConfig(**self.train)
        if not isinstance(self.train, TrainConfig):
            raise EraseError(f"Retrain option train must be a mapping of training options, got {self.train!r}")


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every ``reset_parameters`` submodule re-initialised from ``seed``.

    A parameter that no ``reset_parameters`` covers (one held directly by a custom module) would
    keep its trained value, so the "retrained" model would still carry the forget set: that is
    an error, and the caller must give a factory that builds a fresh model.
    """
    new = copy.deepcopy(model)
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in new.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                covered.update(id(p) for p in m.parameters())
    left = [name for name, p in new.named_parameters() if id(p) not in covered]
    if left:
        raise EraseError(f"cannot re-initialise {type(model).__name__}'s parameter {left[0]!r} (its module has no "
                         "reset_parameters); give a factory that builds a fresh model (factory=... / --arch)")
    return new


def retrain(
    model: nn.Module,
    X_retain,
    y_retain,
    config: RetrainConfig | None = None,
    seed: int = 0,
    factory: Callable[[], nn.Module] | None = None,
    train_fn: Callable[[nn.Module, np.ndarray, np.ndarray], nn.Module | None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a fresh model on D_r (from ``factory`` under ``seed`` if given, else a reset copy).

    ``train_fn(model, X, y)`` trains it (in place, or returning the trained model) instead of the
    project's recipe ``config.train``; use it to retrain with your own training code.
    """
    from erase.classifier.models import seeded

    cfg = config or RetrainConfig()
    fresh = seeded(factory, seed) if factory is not None else fresh_copy(model, seed)
    X, y = np.asarray(X_retain), np.asarray(y_retain)
    if train_fn is None:
        train_classifier(fresh, X, y, cfg.train, seed=seed)
    else:
        out = train_fn(fresh, X, y)
        if out is not None:
            if not isinstance(out, nn.Module):
                raise EraseError(f"the training function returned {type(out).__name__}, not the trained nn.Module (or None)")
            fresh = out
        fresh.eval()
    return fresh, {"n_trained": int(len(y_retain))}
