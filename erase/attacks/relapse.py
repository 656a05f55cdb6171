"""Relapse under benign fine-tuning ("concept resurgence", arXiv 2410.08074): fine-tune the
*erased* UNet for ``steps`` steps with the plain diffusion loss on unrelated prompts and images
(the retain set: prompts naming no erased concept, images by the base model), then generate
the concept's plain prompts. Nothing adversarial is done; the question is whether ordinary
further training undoes the erasure. The fine-tuned weights are used only while generating;
the pipeline's UNet is put back afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from erase.attacks import Attacked, AttackConfig, register
from erase.errors import EraseError
from erase.methods import check_positive, option


@dataclass
class RelapseConfig(AttackConfig):
    steps: int = option(200, "fine-tuning steps on the retain set")
    lr: float = option(1e-5, "learning rate (SD fine-tuning's usual 1e-5)")
    scope: str = option("full", "UNet parameters fine-tuned: full | cross_attn | cross_attn_kv | no_cross_attn")
    optimizer: str = option("adamw", "adamw | adam")
    grad_clip: float | None = option(1.0, "max gradient norm (null: none)")

    def validate(self) -> None:
        from erase.training import SCOPES

        super().validate()
        check_positive(self, "steps")
        check_positive(self, "lr", integer=False)
        if self.scope not in SCOPES:
            raise EraseError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.optimizer not in ("adamw", "adam"):
            raise EraseError(f"optimizer must be adamw or adam, got {self.optimizer!r}")


def run(ctx, cfg: RelapseConfig) -> Attacked:
    from erase.data import add_noise, diffusion_target, encode_prompts
    from erase.training import Trainer, select_parameters

    pipe = ctx.pipe
    params = select_parameters(pipe.unet, cfg.scope)
    saved = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
    emb, _ = encode_prompts(pipe, ctx.prompts)
    emb = emb.cpu()
    scheduler = ctx.scheduler()
    gen = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(ctx.latents), (cfg.batch_size,), generator=gen)
        x0 = ctx.latents[idx].to(ctx.device)
        x_t, noise, t = add_noise(scheduler, x0, gen)
        pred = pipe.unet(x_t, t, encoder_hidden_states=emb[idx].to(ctx.device, pipe.unet.dtype)).sample
        return F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())

    trainer = Trainer(pipe.unet, params, lr=cfg.lr, optimizer=cfg.optimizer, grad_clip=cfg.grad_clip)
    try:
        stats = trainer.run(cfg.steps, step_fn, progress=ctx.report, phase="attack: relapse fine-tuning")
        tuned = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        drift = sum(float((tuned[n] - saved[n]).pow(2).sum()) for n in saved) ** 0.5
    finally:
        from erase.api import load_unet_tensors

        load_unet_tensors(pipe, saved)
        pipe.unet.eval()
    return Attacked(prompts=list(ctx.eval_prompts), tensors=tuned,
                    stats={"loss_first": stats.losses[0], "loss_last": stats.losses[-1], "weight_drift_l2": drift,
                           "retain_prompts": len(set(ctx.prompts))})


register(
    "relapse", RelapseConfig, run, "fine-tune the erased model on unrelated prompts/images and see whether the concept returns",
    toyworld={"n_images": 64, "generation_steps": 15, "steps": 200, "lr": 1e-4, "batch_size": 8},
    needs="retain",
)
