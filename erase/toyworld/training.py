"""Training the bundled model from scratch, in three stages, all seeded and resumable.

1. ``train_vae``: an AutoencoderKL on renders (reconstruction MSE + a small KL term).
2. ``cache_latents``: encode a fixed set of renders once (posterior mean and log-variance).
3. ``train_diffusion``: the UNet and the CLIP text encoder jointly, epsilon-prediction on the
   cached latents, captions drawn afresh each step (templates, dropped attributes, 10% empty
   for classifier-free guidance), EMA of the UNet weights.

Every stage writes safetensors + JSON into ``TrainConfig.work_dir`` and picks up from there.
``export`` turns the latest checkpoint into a diffusers folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from erase.files import replace_path
from erase.toyworld import model as M
from erase.toyworld.concepts import COLOURS, SHAPES, STYLES, TEMPLATES, caption
from erase.toyworld.render import sample_dataset, to_array

Progress = Callable[[str, int, int, dict], None]  # (stage, step, total, info)


@dataclass
class TrainConfig:
    work_dir: str = "toyworld-cache"
    seed: int = 0
    threads: int = 2
    model: M.ModelConfig = field(default_factory=M.ModelConfig)
    # VAE
    vae_images: int = 20000
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # diffusion
    images: int = 30000
    steps: int = 5000
    batch: int = 64
    lr: float = 8e-4
    warmup: int = 300
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    p_uncond: float = 0.1  # empty caption
    p_partial: float = 0.15  # caption naming a subset of the attributes
    grad_clip: float = 1.0
    checkpoint_every: int = 250  # steps


def _save_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def _noop(stage, step, total, info):
    pass


# ----------------------------------------------------------------------------- stage 1: VAE


def vae_path(cfg: TrainConfig) -> Path:
    return Path(cfg.work_dir) / "vae"


def train_vae(cfg: TrainConfig, progress: Progress = _noop):
    """Train (or load, if already trained) the autoencoder; sets its scaling_factor."""
    from diffusers import AutoencoderKL

    out = vae_path(cfg)
    if (out / "config.json").exists():
        return AutoencoderKL.from_pretrained(str(out))
    torch.manual_seed(cfg.seed)
    images, _, _ = sample_dataset(cfg.vae_images, seed=cfg.seed + 1, size=cfg.model.image_size)
    x = torch.from_numpy(to_array(images))
    vae = M.build_vae(cfg.model)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    vae.train()
    for step in range(cfg.vae_steps):
        lr = cfg.vae_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        xb = x[torch.randint(0, len(x), (cfg.vae_batch,), generator=g)]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, xb)
        kl = post.kl().mean()
        loss = mse + cfg.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress("vae", step + 1, cfg.vae_steps, {"mse": float(mse), "kl": float(kl)})
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, 4096, 512)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    tmp = out.with_name(out.name + ".tmp")
    vae.save_pretrained(str(tmp), safe_serialization=True)
    tmp.replace(out)
    return vae


# ----------------------------------------------------------------------------- stage 2: latents


def latents_path(cfg: TrainConfig) -> Path:
    return Path(cfg.work_dir) / "latents.safetensors"


@torch.no_grad()
def cache_latents(cfg: TrainConfig, vae, progress: Progress = _noop) -> dict[str, torch.Tensor]:
    """Posterior mean/std of cfg.images renders and their labels (loaded if cached)."""
    path = latents_path(cfg)
    if path.exists():
        return load_file(str(path))
    images, _, labels = sample_dataset(cfg.images, seed=cfg.seed + 2, size=cfg.model.image_size)
    means, stds = [], []
    for i in range(0, len(images), 500):
        post = vae.encode(torch.from_numpy(to_array(images[i : i + 500]))).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        progress("latents", min(i + 500, len(images)), len(images), {})
    data = {"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.from_numpy(labels)}
    _save_tensors(path, data)
    return data


# ----------------------------------------------------------------------------- captions


def random_caption(labels, rng: np.random.Generator, p_uncond: float, p_partial: float) -> str:
    """A caption for (shape, colour, style) indices: full, partial or empty."""
    shape, colour, style = SHAPES[labels[0]], COLOURS[labels[1]], STYLES[labels[2]]
    u = rng.random()
    if u < p_uncond:
        return ""
    if u < p_uncond + p_partial:
        keep = [rng.random() < 0.5 for _ in range(3)]
        if all(keep):
            keep[int(rng.integers(3))] = False
        words = [w for w, k in zip((colour, style, shape), (keep[1], keep[2], keep[0])) if k]
        if not keep[0]:
            words.append("object")
        prefix = ("", "a drawing of ", "a photo of ", "a picture of ")[int(rng.integers(4))]
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{prefix}{article} {' '.join(words)}"
    return caption(shape, colour, style, int(rng.integers(len(TEMPLATES))))


# ----------------------------------------------------------------------------- stage 3: diffusion


def ckpt_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.work_dir) / "checkpoint"


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _opt_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_opt_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(cfg: TrainConfig, step: int, unet, ema, text_encoder, opt, gen, rng) -> None:
    d = ckpt_dir(cfg)
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    _save_tensors(tmp / "unet.safetensors", unet.state_dict())
    _save_tensors(tmp / "ema.safetensors", ema)
    _save_tensors(tmp / "text_encoder.safetensors", text_encoder.state_dict())
    _save_tensors(tmp / "optimizer.safetensors", _opt_state(opt))
    _save_tensors(tmp / "rng.safetensors", {"torch": gen.get_state()})
    _save_json(tmp / "state.json", {"step": step, "numpy_rng": rng.bit_generator.state, "config": asdict(cfg)})
    replace_path(tmp, d)


def train_diffusion(cfg: TrainConfig, resume: bool = True, progress: Progress = _noop,
                    stop_after_seconds: float | None = None) -> int:
    """Train UNet + text encoder up to cfg.steps (continuing a checkpoint if resume).
    Returns the step reached."""
    torch.set_num_threads(cfg.threads)
    vae = train_vae(cfg, progress)
    data = cache_latents(cfg, vae, progress)
    mean, std, labels = data["mean"], data["std"], data["labels"].numpy()
    scale = float(vae.config.scaling_factor)
    del vae

    torch.manual_seed(cfg.seed)
    unet = M.build_unet(cfg.model)
    text_encoder = M.build_text_encoder(cfg.model)
    tokenizer = M.load_tokenizer()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 4)
    step = 0
    state_file = ckpt_dir(cfg) / "state.json"
    if resume and state_file.exists():
        d = ckpt_dir(cfg)
        state = json.loads(state_file.read_text())
        unet.load_state_dict(load_file(str(d / "unet.safetensors")))
        text_encoder.load_state_dict(load_file(str(d / "text_encoder.safetensors")))
        ema = load_file(str(d / "ema.safetensors"))
        _load_opt_state(opt, load_file(str(d / "optimizer.safetensors")))
        gen.set_state(load_file(str(d / "rng.safetensors"))["torch"])
        rng.bit_generator.state = state["numpy_rng"]
        step = int(state["step"])
    else:
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    sched = M.build_scheduler()
    alphas = sched.alphas_cumprod.float()
    unet.train()
    text_encoder.train()
    start = time.time()
    while step < cfg.steps:
        lr = _lr(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(mean), (cfg.batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        caps = [random_caption(labels[i], rng, cfg.p_uncond, cfg.p_partial) for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, len(alphas), (cfg.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids).last_hidden_state
        pred = unet(zt, t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        progress("diffusion", step, cfg.steps, {"loss": float(loss), "lr": lr})
        out_of_time = stop_after_seconds is not None and time.time() - start > stop_after_seconds
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            save_checkpoint(cfg, step, unet, ema, text_encoder, opt, gen, rng)
        if out_of_time:
            break
    return step


# ----------------------------------------------------------------------------- export


def load_checkpoint_components(cfg: TrainConfig, use_ema: bool = True):
    """(vae, unet, text_encoder) from the work dir's latest checkpoint."""
    from diffusers import AutoencoderKL

    d = ckpt_dir(cfg)
    vae = AutoencoderKL.from_pretrained(str(vae_path(cfg)))
    unet = M.build_unet(cfg.model)
    unet.load_state_dict(load_file(str(d / ("ema.safetensors" if use_ema else "unet.safetensors"))))
    text_encoder = M.build_text_encoder(cfg.model)
    text_encoder.load_state_dict(load_file(str(d / "text_encoder.safetensors")))
    return vae, unet, text_encoder


def export(cfg: TrainConfig, dest: Path, use_ema: bool = True) -> dict:
    """Write the latest checkpoint as a diffusers folder at dest. Pieces of unknown words get
    the unk token's embedding, so they all mean "unknown"."""
    from erase.toyworld.tokenizer import first_piece_id

    vae, unet, text_encoder = load_checkpoint_components(cfg, use_ema)
    state = json.loads((ckpt_dir(cfg) / "state.json").read_text())
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        emb[first_piece_id():] = emb[2]
    info = {"step": state["step"], "ema": use_ema, "train_config": asdict(cfg)}
    M.save_pipeline(Path(dest), vae.eval(), unet.eval(), text_encoder.eval(), extra=info)
    return info
