"""Weight saliency: gradient magnitudes -> a binary mask -> masked updates.

One module for both sides of the toolkit. The diffusion methods (SalUn on the UNet) and the
classifier methods (SalUn on a torch classifier) call exactly these functions:

1. :func:`accumulate_gradients` sums the gradient of any loss over one pass of the forget data
   and returns ``|sum of gradients|`` per parameter (no optimizer step is taken).
2. :func:`compute_mask` keeps the weights with the LARGEST saliency: a fixed fraction (ranked
   globally over all parameters or within each parameter tensor) or everything at or above a
   threshold gamma.
3. :class:`SaliencyMask` zeroes the gradients of non-salient weights during training and,
   after each optimizer step, resets them to their original values, so that
   ``theta_u = m * theta + (1 - m) * theta_o`` holds exactly (also with weight decay).
4. :func:`save_mask` / :func:`load_mask` store masks as safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "accumulate_gradients",
    "compute_mask",
    "SaliencyMask",
    "mask_fraction",
    "save_mask",
    "load_mask",
]


def _named_trainable(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    if names is None:
        return {n: p for n, p in params.items() if p.requires_grad}
    names = list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"parameters not found in the model: {missing[:5]}")
    return {n: params[n] for n in names}


def accumulate_gradients(
    model: nn.Module,
    loss_fn: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    param_names: Iterable[str] | None = None,
    loss_scale: float = 2.0**16,
    reduce: Callable[[list[torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``|sum over batches of d loss_fn(batch) / d theta|`` for each chosen parameter.

    ``loss_fn`` gets one batch and returns a scalar loss. Gradients of the chosen parameters are
    summed over all batches (as in SalUn's reference code) and the absolute value is returned in
    fp32 on the parameter's device. The model's own ``.grad`` fields and ``requires_grad`` flags
    are left as they were found.

    The loss is multiplied by ``loss_scale`` before ``backward`` and each gradient divided by it
    in fp32 afterwards, as a GradScaler does in fp16 training: under fp16 autocast the small
    gradients of the activations would otherwise underflow to zero and their weights would get a
    saliency of exactly 0. A power of two keeps fp32 results bit-identical. If a gradient comes out
    non-finite (overflow), the scale is halved and the backward redone through the same graph.

    ``reduce``, if given, sums the gradient sums in place across data-parallel processes before
    the absolute value is taken (erase.distributed.Shard.sum_; each process then passes its
    share of every batch).
    """
    params = _named_trainable(model, param_names)
    if not params:
        raise ValueError("no parameters to compute saliency over")
    if not (math.isfinite(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale}")
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    saved_grads = {n: p.grad for n, p in params.items()}
    chosen = {id(p) for p in params.values()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        n_batches = 0
        for batch in batches:
            loss_scale = _scaled_backward(params, loss_fn, batch, loss_scale)
            for n, p in params.items():
                if p.grad is not None:
                    sums[n] += p.grad.float() / loss_scale
            n_batches += 1
        if n_batches == 0:
            raise ValueError("no batches to compute saliency over (the forget data is empty)")
        if reduce is not None:
            reduce(list(sums.values()))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved_flags[n])
        for n, p in params.items():
            p.grad = saved_grads[n]
    return {n: s.abs_() for n, s in sums.items()}


def _scaled_backward(params: Mapping[str, nn.Parameter], loss_fn: Callable, batch, scale: float) -> float:
    """Backward of ``scale * loss_fn(batch)`` into ``params``' ``.grad``. While any gradient
    overflows, halve ``scale`` and backward again through the same graph (same noise, same
    timesteps: ``loss_fn`` runs once per batch). Returns the scale that was used."""
    loss = loss_fn(batch)
    if not torch.isfinite(loss):
        raise ValueError(f"the saliency loss is {loss.item()}: the forget data or the model is broken")
    while True:
        for p in params.values():
            p.grad = None
        (loss * scale).backward(retain_graph=scale > 1.0)
        if all(bool(torch.isfinite(p.grad).all()) for p in params.values() if p.grad is not None):
            return scale
        if scale <= 1.0:
            raise ValueError("saliency gradients are not finite even without loss scaling")
        scale = max(scale / 2.0, 1.0)


def _top_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` largest entries of ``flat`` (ties broken by position)."""
    n = flat.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    # The k-th largest value is the (n - k + 1)-th smallest.
    threshold = torch.kthvalue(flat.float().cpu() if flat.device.type == "mps" else flat.float(), n - k + 1).values
    mask = flat > threshold
    remaining = k - int(mask.sum())
    if remaining > 0:
        ties = flat == threshold
        mask |= ties & (torch.cumsum(ties, 0) <= remaining)
    return mask


def compute_mask(
    saliency: Mapping[str, torch.Tensor],
    fraction: float | None = 0.5,
    threshold: float | None = None,
    per_layer: bool = False,
) -> dict[str, torch.Tensor]:
    """Turn saliency scores into a boolean mask that selects the LARGEST scores.

    Exactly one of ``fraction`` (share of weights kept, in (0, 1]) and ``threshold`` (keep
    scores ``>= threshold``) is used; ``threshold`` wins when both are given. With ``fraction``
    the ranking is global over all tensors, or within each tensor when ``per_layer`` is true;
    the count kept is ``ceil(fraction * n)`` (ties broken by position).
    """
    if not saliency:
        raise ValueError("saliency is empty: no parameters to mask")
    if threshold is not None:
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"saliency threshold must be a finite number >= 0, got {threshold}")
        return {n: s >= threshold for n, s in saliency.items()}
    if fraction is None or not (0.0 < float(fraction) <= 1.0):
        raise ValueError(f"mask fraction must be in (0, 1], got {fraction}")
    if per_layer:
        return {
            n: _top_k_mask(s.reshape(-1), math.ceil(fraction * s.numel())).reshape(s.shape)
            for n, s in saliency.items()
        }
    names = list(saliency)
    flat = torch.cat([saliency[n].reshape(-1).float() for n in names])
    flat_mask = _top_k_mask(flat, math.ceil(fraction * flat.numel()))
    out, start = {}, 0
    for n in names:
        size = saliency[n].numel()
        out[n] = flat_mask[start : start + size].reshape(saliency[n].shape)
        start += size
    return out


def mask_fraction(mask: Mapping[str, torch.Tensor]) -> float:
    """Share of weights the mask keeps trainable."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / max(total, 1)


class SaliencyMask:
    """Applies a mask during training so that only salient weights move.

    Use as a context manager around the training loop::

        with SaliencyMask(model, mask) as sm:
            for batch in data:
                loss.backward(); optimizer.step()
                sm.project_()   # non-salient weights back to theta_o

    Entering registers gradient hooks that zero the non-salient gradient entries; ``project_``
    copies the original values back into non-salient entries (needed because weight decay or
    optimizer state can move a weight even with a zero gradient). Leaving removes the hooks.
    """

    def __init__(self, model: nn.Module, mask: Mapping[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = [n for n in mask if n not in params]
        if missing:
            raise KeyError(f"mask names parameters the model does not have: {missing[:5]}")
        self.params = {n: params[n] for n in mask}
        self.mask = {n: mask[n].to(device=params[n].device, dtype=torch.bool) for n in mask}
        for n, m in self.mask.items():
            if m.shape != self.params[n].shape:
                raise ValueError(f"mask for {n} has shape {tuple(m.shape)}, parameter has {tuple(self.params[n].shape)}")
        self.original = {n: p.detach().clone() for n, p in self.params.items()}
        self._handles: list = []

    def __enter__(self) -> "SaliencyMask":
        for n, p in self.params.items():
            m = self.mask[n]
            self._handles.append(p.register_hook(lambda g, m=m: g * m.to(g.dtype)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def project_(self) -> None:
        for n, p in self.params.items():
            p.data = torch.where(self.mask[n], p.data, self.original[n])


def save_mask(path: str | Path, mask: Mapping[str, torch.Tensor], metadata: Mapping[str, object] | None = None) -> Path:
    """Write a mask as safetensors (bool tensors), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"format": "erase-saliency-mask", "fraction_kept": f"{mask_fraction(mask):.6f}"}
    if metadata:
        meta["metadata"] = json.dumps(dict(metadata), default=str)
    save_file({n: m.to(torch.bool).contiguous().cpu() for n, m in mask.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_mask(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a mask written by :func:`save_mask`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"saliency mask not found: {path}")
    return {n: t.to(torch.bool) for n, t in load_file(str(path)).items()}
