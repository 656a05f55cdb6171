"""Boundary Unlearning (Chen et al., CVPR 2023): class-wise forgetting by moving the decision boundary.

- Boundary Shrink: with a frozen copy f_o of the original model, one FGSM step per forget
  sample x' = clip(x + eps * sign(grad_x CE(f_o(x), y))) in the model's own input space gives
  the nearest-but-incorrect label y_nbi = argmax f_o(x'). When the attack fails (argmax is still
  y), the sample is counted and labelled with the best class other than y at x' (still the
  nearest incorrect class). The model is then fine-tuned on (x, y_nbi) over D_f only.
- Boundary Expanding: the head is widened to K + 1 outputs (a shadow class, its row freshly
  initialised), the model is fine-tuned on D_f labelled with the shadow class, and the shadow
  row is removed so that the result is K-way again.

Published settings (ResNet/VGG on CIFAR): SGD lr 1e-5, momentum 0.9, 10 epochs, batch 64.
They are kept where they carry over (momentum, epochs, batch, eps) but the learning rate is
not: 10 epochs at 1e-5 on a forget class of ~145 digits is ~30 steps and moves a 10k-parameter
MLP by nothing measurable. The tiny-model defaults below were found by measurement on digits
(forget-class test accuracy 0 and other classes within ~1 point over seeds 0-2 at lr 0.002;
0.03 already costs ~10 points on the other classes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from erase.classifier.models import head_layer, set_module
from erase.classifier.options import COUNT, MOMENTUM, POSITIVE, check
from erase.errors import EraseError


@dataclass
class BoundaryShrinkConfig:
    """Boundary Shrink: FGSM neighbour search, then fine-tune on nearest-but-incorrect labels."""

    epsilon: float = field(default=0.1, metadata={"help": "FGSM step in input units (digits: [0,1] pixels); paper 0.1"})
    lr: float = field(default=0.002, metadata={"help": "SGD learning rate (paper 1e-5 for ResNets; tiny MLP needs more)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (paper 0.9)"})
    epochs: int = field(default=10, metadata={"help": "passes over D_f (paper 10)"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size (paper 64)"})

    def __post_init__(self):
        check(self, {"epsilon": POSITIVE, "lr": POSITIVE, "momentum": MOMENTUM, "epochs": COUNT, "batch_size": COUNT})


@dataclass
class BoundaryExpandConfig:
    """Boundary Expanding: fine-tune D_f onto a shadow class, then prune the shadow output."""

    lr: float = field(default=0.002, metadata={"help": "SGD learning rate (paper 1e-5 for ResNets; tiny MLP needs more)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (paper 0.9)"})
    epochs: int = field(default=10, metadata={"help": "passes over D_f (paper 10)"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size (paper 64)"})

    def __post_init__(self):
        check(self, {"lr": POSITIVE, "momentum": MOMENTUM, "epochs": COUNT, "batch_size": COUNT})


def _tensors(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(y) == 0:
        raise EraseError("the forget set is empty: nothing to unlearn")
    return X, y


def fgsm_neighbours(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, epsilon: float, input_range: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One FGSM step on the frozen model; returns (x', y_nbi, number of failed attacks)."""
    model.eval()
    x = X.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    x_adv = X + epsilon * grad.sign()
    if input_range is not None:
        x_adv = x_adv.clamp(*input_range)
    with torch.no_grad():
        logits = model(x_adv)
    pred = logits.argmax(1)
    failed = pred == y
    # Nearest-but-incorrect even when the step did not cross the boundary: best class other than y.
    masked = logits.clone()
    masked[torch.arange(len(y)), y] = -torch.inf
    y_nbi = torch.where(failed, masked.argmax(1), pred)
    return x_adv.detach(), y_nbi, int(failed.sum())


def _finetune(model: nn.Module, X, y, lr, momentum, epochs, batch_size, seed) -> None:
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), batch_size):
            b = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X[b]), y[b]).backward()
            opt.step()
    model.eval()


def boundary_shrink(
    model: nn.Module,
    X_forget,
    y_forget,
    config: BoundaryShrinkConfig | None = None,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Return (unlearned copy, stats). ``model`` is left untouched and serves as the frozen f_o."""
    cfg = config or BoundaryShrinkConfig()
    X, y = _tensors(X_forget, y_forget)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    _, y_nbi, failed = fgsm_neighbours(frozen, X, y, cfg.epsilon, input_range)
    unlearned = copy.deepcopy(model)
    _finetune(unlearned, X, y_nbi, cfg.lr, cfg.momentum, cfg.epochs, cfg.batch_size, seed)
    counts = torch.bincount(y_nbi).tolist()
    stats = {
        "attack_failed": failed,
        "attack_total": int(len(y)),
        "nbi_label_counts": {str(c): n for c, n in enumerate(counts) if n},
    }
    return unlearned, stats


def boundary_expand(
    model: nn.Module, X_forget, y_forget, config: BoundaryExpandConfig | None = None, seed: int = 0,
    head: str | None = None,
) -> tuple[nn.Module, dict]:
    """Return (unlearned K-way copy, stats). ``model`` is left untouched; ``head``: the head's
    dotted name (default: the last ``nn.Linear``)."""
    cfg = config or BoundaryExpandConfig()
    X, _ = _tensors(X_forget, y_forget)
    unlearned = copy.deepcopy(model)
    name, head = head_layer(unlearned, head)
    K = head.out_features
    like = {"bias": head.bias is not None, "device": head.weight.device, "dtype": head.weight.dtype}
    with torch.random.fork_rng(devices=[]):  # layer construction draws weights: keep the global RNG as it was
        torch.manual_seed(int(seed))
        wide = nn.Linear(head.in_features, K + 1, **like)  # the shadow row gets a fresh default init
        pruned = nn.Linear(head.in_features, K, **like)
    with torch.no_grad():
        wide.weight[:K] = head.weight
        if head.bias is not None:
            wide.bias[:K] = head.bias
    set_module(unlearned, name, wide)
    shadow = torch.full((len(X),), K, dtype=torch.long)
    _finetune(unlearned, X, shadow, cfg.lr, cfg.momentum, cfg.epochs, cfg.batch_size, seed)
    # Prune the shadow neuron: back to K outputs.
    with torch.no_grad():
        pruned.weight.copy_(wide.weight[:K])
        if head.bias is not None:
            pruned.bias.copy_(wide.bias[:K])
    set_module(unlearned, name, pruned)
    return unlearned.eval(), {"shadow_class": K, "n_outputs": K}
