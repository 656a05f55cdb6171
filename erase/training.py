"""The fine-tuning loop every diffusion method uses, on accelerate.

fp32 master weights with accelerate's autocast (bf16/fp16 on a GPU, fp32 on CPU), gradient
clipping, optional gradient checkpointing, a saliency mask that keeps non-salient weights
fixed, seeded, and a progress callback shared by the CLI and the app. The method supplies
``step_fn(step) -> loss``; this module owns everything around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from erase.errors import EraseError
from erase.saliency import SaliencyMask

UNET_SCOPES = ("full", "cross_attn", "cross_attn_kv", "no_cross_attn")
SCOPES = (*UNET_SCOPES, "text_encoder")

# progress(done, total, info) -> None; raise Cancelled inside it to stop the run.
ProgressFn = Callable[[int, int, dict], None]

__all__ = ["SCOPES", "UNET_SCOPES", "scope_component", "scope_modules", "select_tensors", "Cancelled", "ProgressFn", "select_parameters", "Trainer", "TrainStats", "make_accelerator"]


class Cancelled(Exception):
    """Raised by a progress callback to stop a run; the engine restores the weights."""


def scope_component(scope: str) -> str:
    """The pipeline component a scope selects from: 'text_encoder' or 'unet'."""
    return "text_encoder" if scope == "text_encoder" else "unet"


def scope_modules(pipe, scope: str) -> dict[str, nn.Module]:
    """The components a scope trains, by name: the UNet, or every text encoder (SDXL: both)."""
    from erase.conditioning import text_encoder_names

    if scope_component(scope) == "unet":
        return {"unet": pipe.unet}
    return {n: getattr(pipe, n) for n in text_encoder_names(pipe)}


def select_parameters(module: nn.Module, scope: str) -> dict[str, nn.Parameter]:
    """Parameters a method may change. In a UNet: 'full', 'cross_attn' (all of attn2),
    'cross_attn_kv' (attn2's to_k/to_v) or 'no_cross_attn' (everything but attn2: ESD-u). In a
    CLIP text encoder: 'text_encoder' (its transformer layers and final layer norm, AdvUnlearn's
    'text_encoder_full'; the token embeddings stay), and SDXL's second encoder's projection (it
    makes the pooled embedding the UNet also sees)."""
    if scope not in SCOPES:
        raise EraseError(f"unknown trainable scope {scope!r}; choose from {', '.join(SCOPES)}")
    named = dict(module.named_parameters())
    if scope == "full":
        chosen = named
    elif scope == "text_encoder":
        chosen = {n: p for n, p in named.items()
                  if n.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm.")) or n == "text_projection.weight"}
    elif scope == "cross_attn":
        chosen = {n: p for n, p in named.items() if ".attn2." in n}
    elif scope == "no_cross_attn":
        chosen = {n: p for n, p in named.items() if ".attn2." not in n}
    else:
        chosen = {n: p for n, p in named.items() if ".attn2.to_k." in n or ".attn2.to_v." in n}
    if not chosen:
        what = "text encoder (not a CLIP text model?)" if scope == "text_encoder" else "UNet (no cross-attention?)"
        raise EraseError(f"trainable scope {scope!r} selects no parameters in this {what}")
    return chosen


def select_tensors(pipe, scope: str) -> dict[str, nn.Parameter]:
    """``select_parameters`` on the scope's components of ``pipe``, keyed as an ErasureResult keys
    them (text-encoder names prefixed 'text_encoder.' or 'text_encoder_2.')."""
    from erase.api import qualified_name

    return {qualified_name(component, n): p for component, module in scope_modules(pipe, scope).items()
            for n, p in select_parameters(module, scope).items()}


def make_accelerator(mixed_precision: str, device: torch.device):
    """An Accelerator for this device/precision (resetting accelerate's singleton state if needed)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kwargs = dict(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    try:
        return Accelerator(**kwargs)
    except ValueError:
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


@dataclass
class TrainStats:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None


def _validate(steps: int, lr: float, grad_clip: float | None) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise EraseError(f"number of training steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise EraseError(f"learning rate must be a positive number, got {lr!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise EraseError(f"gradient clip must be positive (or null to disable), got {grad_clip!r}")


class Trainer:
    """Trains ``params`` (a subset of ``unet``'s parameters) with a method's loss.

    Only ``params`` require grad while training; every flag, the train/eval mode and gradient
    checkpointing are put back afterwards.
    """

    def __init__(
        self,
        unet: nn.Module,
        params: dict[str, nn.Parameter],
        *,
        lr: float,
        weight_decay: float = 0.0,
        optimizer: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float | None = 1.0,
        mixed_precision: str = "no",
        gradient_checkpointing: bool = False,
        shard=None,
    ):
        if optimizer not in ("adamw", "adam"):
            raise EraseError(f"unknown optimizer {optimizer!r}; choose 'adamw' or 'adam'")
        self.unet, self.params = unet, params
        self.lr, self.weight_decay, self.optimizer_name, self.betas = lr, weight_decay, optimizer, tuple(betas)
        self.grad_clip, self.gradient_checkpointing = grad_clip, gradient_checkpointing
        self.device = next(unet.parameters()).device
        self.accelerator = make_accelerator(mixed_precision, self.device)
        from erase.distributed import Shard

        self.shard = shard if shard is not None else Shard()

    def autocast(self):
        return self.accelerator.autocast()

    def run(
        self,
        steps: int,
        step_fn: Callable[[int], torch.Tensor],
        *,
        mask: dict[str, torch.Tensor] | None = None,
        progress: ProgressFn | None = None,
        phase: str = "train",
    ) -> TrainStats:
        _validate(steps, self.lr, self.grad_clip)
        unet, acc = self.unet, self.accelerator
        flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        was_training = unet.training
        ids = {id(p) for p in self.params.values()}
        for p in unet.parameters():
            p.requires_grad_(id(p) in ids)
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        opt = cls(list(self.params.values()), lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        opt = acc.prepare_optimizer(opt)
        if self.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        masker = SaliencyMask(unet, mask) if mask is not None else None
        stats = TrainStats()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            self.shard.broadcast_(list(self.params.values()))  # data-parallel: every process starts from process 0's weights
            if masker is not None:
                masker.__enter__()
            for step in range(steps):
                with acc.autocast():
                    loss = step_fn(step)
                value = loss.detach().float().reshape(1).clone()
                self.shard.sum_([value])  # data-parallel: each process's loss is its share of the batch's
                if not torch.isfinite(value).all():
                    raise EraseError(f"loss became {value.item()} at step {step}: lower the learning rate")
                acc.backward(loss)
                if self.shard.active:
                    self._sum_gradients()
                if self.grad_clip is not None:
                    acc.clip_grad_norm_(list(self.params.values()), self.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if masker is not None:
                    masker.project_()
                stats.losses.append(float(value))
                stats.steps = step + 1
                if progress is not None:
                    progress(step + 1, steps, {"phase": phase, "loss": stats.losses[-1]})
        finally:
            if masker is not None:
                masker.__exit__(None, None, None)
            if self.gradient_checkpointing:
                unet.disable_gradient_checkpointing()
            unet.train(was_training)
            for n, p in unet.named_parameters():
                p.requires_grad_(flags[n])
                p.grad = None
        stats.seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            stats.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        return stats

    def _sum_gradients(self) -> None:
        """Data-parallel: every trainable parameter's gradient becomes its sum over the processes.
        A gradient no process has stays unset, as on one process (the optimiser then skips the
        parameter, weight decay included); one that some process lacks (its share of a short
        batch was empty) counts as zeros there."""
        params = list(self.params.values())
        present = torch.tensor([float(p.grad is not None) for p in params])
        self.shard.sum_([present])
        chosen = [p for p, n in zip(params, present.tolist()) if n > 0]
        for p in chosen:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.shard.sum_([p.grad for p in chosen])
