"""Relapse under benign fine-tuning ("concept resurgence", arXiv 2410.08074): fine-tune the
*erased* model for ``steps`` steps with the plain diffusion loss on unrelated prompts and images
(the retain set: prompts naming no erased concept, images by the base model), then generate
the concept's plain prompts. Nothing adversarial is done; the question is whether ordinary
further training undoes the erasure. ``scope: auto`` fine-tunes the whole UNet, and the text
encoder's layers too when the erasure changed the text encoder (what fine-tuning the erased
model means for an erasure that lives there). The fine-tuned weights are used only while
generating; the pipeline's weights are put back afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from erase.attacks import Attacked, AttackConfig, register
from erase.conditioning import unet_inputs
from erase.errors import EraseError
from erase.methods import check_positive, option


@dataclass
class RelapseConfig(AttackConfig):
    steps: int = option(200, "fine-tuning steps on the retain set")
    lr: float = option(1e-5, "learning rate (SD fine-tuning's usual 1e-5)")
    scope: str = option("auto", "what is fine-tuned: auto (the UNet, plus the text encoder if the erasure changed it) | full | cross_attn | cross_attn_kv | no_cross_attn | text_encoder")
    optimizer: str = option("adamw", "adamw | adam")
    grad_clip: float | None = option(1.0, "max gradient norm (null: none)")

    def validate(self) -> None:
        from erase.training import SCOPES

        super().validate()
        check_positive(self, "steps")
        check_positive(self, "lr", integer=False)
        if self.scope != "auto" and self.scope not in SCOPES:
            raise EraseError(f"scope must be auto or one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.optimizer not in ("adamw", "adam"):
            raise EraseError(f"optimizer must be adamw or adam, got {self.optimizer!r}")
        if self.grad_clip is not None:
            check_positive(self, "grad_clip", integer=False)


def scopes(cfg: RelapseConfig, erased_components) -> list[str]:
    if cfg.scope != "auto":
        return [cfg.scope]
    return ["full", "text_encoder"] if any(c.startswith("text_encoder") for c in erased_components) else ["full"]


def run(ctx, cfg: RelapseConfig) -> Attacked:
    from torch import nn

    from erase.api import load_tensors
    from erase.conditioning import encode, text_encoders, token_ids
    from erase.data import add_noise, diffusion_target, encode_prompts
    from erase.training import Trainer, scope_component, scope_modules, select_tensors

    pipe = ctx.pipe
    chosen = scopes(cfg, ctx.erased_components)
    params = {n: p for s in chosen for n, p in select_tensors(pipe, s).items()}
    components = sorted({scope_component(s) for s in chosen})
    saved = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
    ids = token_ids(pipe, ctx.prompts)
    emb = encode_prompts(pipe, ctx.prompts)[0].cpu()
    scheduler = ctx.scheduler()
    gen = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(ctx.latents), (cfg.batch_size,), generator=gen)
        x0 = ctx.latents[idx].to(ctx.device)
        x_t, noise, t = add_noise(scheduler, x0, gen)
        cond = encode(pipe, ids=ids[idx]) if "text_encoder" in components else emb[idx]
        pred = pipe.unet(x_t, t, **unet_inputs(pipe.unet, cond.to(ctx.device, pipe.unet.dtype))).sample
        return F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())

    # one module holding every trained component, so that the trainer sees all their parameters
    module = nn.ModuleDict({name: m for s in chosen for name, m in scope_modules(pipe, s).items()})
    trainer = Trainer(module, params, lr=cfg.lr, optimizer=cfg.optimizer, grad_clip=cfg.grad_clip)
    try:
        stats = trainer.run(cfg.steps, step_fn, progress=ctx.report, phase="attack: relapse fine-tuning")
        tuned = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        drift = sum(float((tuned[n] - saved[n]).pow(2).sum()) for n in saved) ** 0.5
    finally:
        load_tensors(pipe, saved)
        pipe.unet.eval()
        for _, te in text_encoders(pipe):
            te.eval()
    return Attacked(prompts=list(ctx.eval_prompts), tensors=tuned,
                    stats={"loss_first": stats.losses[0], "loss_last": stats.losses[-1], "weight_drift_l2": drift,
                           "retain_prompts": len(set(ctx.prompts)), "fine_tuned": components})


register(
    "relapse", RelapseConfig, run, "fine-tune the erased model on unrelated prompts/images and see whether the concept returns",
    toyworld={"n_images": 64, "generation_steps": 15, "steps": 200, "lr": 1e-4, "batch_size": 8},
    needs="retain",
)
