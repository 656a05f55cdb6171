"""SalUn for classification (Fan et al., ICLR 2024): saliency-masked random labelling.

1. Saliency from the shared engine module (:mod:`erase.saliency`): |sum over D_f batches of
   grad CE(theta_o; x, y)|, no optimizer step; the largest ``mask_fraction`` of the weights,
   ranked globally, are salient (default 50%).
2. Fine-tune with random labels y' != y on D_f (drawn uniformly from the other K - 1 classes,
   so y' = y can never happen, unlike the reference code's ``randint(0, K)``) mixed and
   shuffled with D_r under its true labels; only the salient weights move
   (``SaliencyMask``: masked gradients, non-salient weights reset after every step).

Published (CIFAR-10, ResNet-18): SGD lr 0.013, momentum 0.9, weight decay 5e-4, 10 epochs,
batch 256. Tiny-model defaults: the paper's optimizer, lr and epochs carry over; only the batch
is 64 (D_r of digits is ~1.3k samples, so batch 256 gives ~5 steps per epoch: measured on
digits, seeds 0-2, batch 256 costs 1-2 points of TA for class-wise forgetting).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from erase.classifier.options import COUNT, MOMENTUM, NON_NEGATIVE, POSITIVE, check
from erase.errors import EraseError
from erase.saliency import SaliencyMask, accumulate_gradients, compute_mask, mask_fraction


@dataclass
class SalUnConfig:
    """SalUn (classification): random labels on D_f, true labels on D_r, salient weights only."""

    mask_fraction: float = field(default=0.5, metadata={"help": "share of weights kept salient, ranked globally (paper 0.5)"})
    lr: float = field(default=0.013, metadata={"help": "SGD learning rate (paper 0.013)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (paper 0.9)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay (paper 5e-4)"})
    epochs: int = field(default=10, metadata={"help": "passes over D_f + D_r (paper 10)"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size (paper 256)"})
    saliency_batch_size: int = field(default=64, metadata={"help": "batch size of the saliency pass over D_f"})

    def __post_init__(self):
        check(self, {
            "mask_fraction": (float, 0.0, 1.0, False, True), "lr": POSITIVE, "momentum": MOMENTUM,
            "weight_decay": NON_NEGATIVE, "epochs": COUNT, "batch_size": COUNT, "saliency_batch_size": COUNT,
        })


def random_other_labels(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """y' drawn uniformly from the K - 1 classes other than y (never y' = y)."""
    if n_classes < 2:
        raise EraseError(f"random relabelling needs at least 2 classes, got {n_classes}")
    y = np.asarray(y, dtype=np.int64)
    return (y + rng.integers(1, n_classes, size=len(y))) % n_classes


def saliency_mask(model: nn.Module, X_forget: torch.Tensor, y_forget: torch.Tensor, fraction: float, batch_size: int):
    """Mask of the largest |grad CE| weights on D_f, through :mod:`erase.saliency`."""
    batches = [(X_forget[s : s + batch_size], y_forget[s : s + batch_size]) for s in range(0, len(y_forget), batch_size)]
    was_training = model.training
    model.eval()
    try:
        sal = accumulate_gradients(model, lambda b: nn.functional.cross_entropy(model(b[0]), b[1]), batches)
    finally:
        model.train(was_training)
    return compute_mask(sal, fraction=fraction)


def salun(
    model: nn.Module,
    X_forget,
    y_forget,
    X_retain,
    y_retain,
    n_classes: int,
    config: SalUnConfig | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Return (unlearned copy, stats); ``model`` is left untouched."""
    cfg = config or SalUnConfig()
    Xf = torch.as_tensor(np.asarray(X_forget), dtype=torch.float32)
    yf = np.asarray(y_forget, dtype=np.int64)
    if len(yf) == 0:
        raise EraseError("the forget set is empty: nothing to unlearn")
    Xr = torch.as_tensor(np.asarray(X_retain), dtype=torch.float32)
    yr = torch.as_tensor(np.asarray(y_retain), dtype=torch.long)
    unlearned = copy.deepcopy(model)
    mask = saliency_mask(unlearned, Xf, torch.as_tensor(yf), cfg.mask_fraction, cfg.saliency_batch_size)

    rng = np.random.default_rng(seed)
    y_rand = torch.as_tensor(random_other_labels(yf, n_classes, rng))
    X_all = torch.cat([Xf, Xr])
    y_all = torch.cat([y_rand, yr])
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.SGD(unlearned.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    unlearned.train()
    with SaliencyMask(unlearned, mask) as sm:
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y_all), generator=gen)
            for s in range(0, len(y_all), cfg.batch_size):
                b = perm[s : s + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(unlearned(X_all[b]), y_all[b]).backward()
                opt.step()
                sm.project_()
    unlearned.eval()
    return unlearned, {"mask_fraction": mask_fraction(mask), "relabelled_equal": int((y_rand.numpy() == yf).sum())}
