"""The judge: a small CNN that names the shape, colour and style of a toy-world image.

Trained on renderer images (with mild blur/noise/colour jitter so that it also reads model
generations); its penultimate features feed the Frechet distance in ``metrics``.
Weights: ``weights/judge.safetensors`` + ``weights/judge.json`` (config and accuracy).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from erase.errors import EraseError
from erase.toyworld.concepts import KINDS
from erase.toyworld.render import SIZE, sample_dataset, to_array

HEADS = tuple(KINDS)  # ("shape", "colour", "style")
REBUILD = "python scripts/train_toyworld.py --judge"


@dataclass
class JudgeConfig:
    seed: int = 0
    threads: int = 2
    width: int = 24
    feature_dim: int = 128
    image_size: int = SIZE
    train_images: int = 16000
    test_images: int = 3000
    epochs: int = 3
    batch: int = 128
    lr: float = 2e-3


class JudgeNet(nn.Module):
    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        w = cfg.width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(stem, block(w, 2 * w), block(2 * w, 4 * w))
        self.proj = nn.Linear(4 * w, cfg.feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.feature_dim, len(v)) for k, v in KINDS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.proj(self.body(x).mean((2, 3))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}


def _as_tensor(images) -> torch.Tensor:
    """PIL images, a uint8 array (n, H, W, 3) or a float tensor in [-1, 1] -> (n, 3, H, W)."""
    if torch.is_tensor(images):
        return images.float()
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
        return torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    return torch.from_numpy(to_array(list(images)))


class Judge:
    def __init__(self, net: JudgeNet, cfg: JudgeConfig, info: dict | None = None):
        self.net = net.eval()
        self.cfg = cfg
        self.info = info or {}

    @torch.no_grad()
    def logits(self, images, batch: int = 256) -> dict[str, torch.Tensor]:
        x = _as_tensor(images)
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="area")
        outs = [self.net(x[i : i + batch]) for i in range(0, len(x), batch)]
        return {k: torch.cat([o[k] for o in outs]) for k in HEADS}

    def classify(self, images) -> dict[str, list[str]]:
        """Predicted concept names per head: {"shape": [...], "colour": [...], "style": [...]}."""
        return {k: [KINDS[k][i] for i in v.argmax(1).tolist()] for k, v in self.logits(images).items()}

    @torch.no_grad()
    def features(self, images, batch: int = 256) -> np.ndarray:
        """Penultimate features (n, feature_dim), float64, for the Frechet distance."""
        x = _as_tensor(images)
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="area")
        return torch.cat([self.net.features(x[i : i + batch]) for i in range(0, len(x), batch)]).double().numpy()

    def accuracy(self, images, labels) -> dict[str, float]:
        """Share right per head; labels is (n, 3) indices (shape, colour, style)."""
        labels = np.asarray(labels)
        return {k: float((v.argmax(1).numpy() == labels[:, j]).mean())
                for j, (k, v) in enumerate(self.logits(images).items())}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild blur, noise and colour jitter, so generations that are slightly off still read."""
    n = len(x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    k = torch.rand(n, 1, 1, 1, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) < 0.5)
    x = x * (1 - k) + blur * k
    x = x * (1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)) + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    x = x + torch.randn(x.shape, generator=g) * 0.06 * torch.rand(n, 1, 1, 1, generator=g)
    return x.clamp(-1, 1)


def train_judge(cfg: JudgeConfig = JudgeConfig(), dest: Path | None = None, progress=None) -> dict:
    """Train on fresh renders, measure on held-out renders, write judge.safetensors/json."""
    from safetensors.torch import save_file

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    imgs, _, y = sample_dataset(cfg.train_images, seed=cfg.seed + 100, size=cfg.image_size)
    x, y = torch.from_numpy(to_array(imgs)), torch.from_numpy(y)
    net = JudgeNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * (len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    g = torch.Generator().manual_seed(cfg.seed)
    step = 0
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - cfg.batch + 1, cfg.batch):
            idx = perm[i : i + cfg.batch]
            out = net(_augment(x[idx], g))
            loss = sum(F.cross_entropy(out[k], y[idx, j]) for j, k in enumerate(HEADS))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress("judge", step, steps, {"loss": float(loss)})
    judge = Judge(net.eval(), cfg)
    timgs, _, ty = sample_dataset(cfg.test_images, seed=cfg.seed + 200, size=cfg.image_size)
    acc = judge.accuracy(timgs, ty)
    info = {"config": asdict(cfg), "heldout_accuracy": acc, "train_seconds": round(time.time() - t0, 1)}
    if dest is not None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / "judge.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        tmp.replace(dest / "judge.safetensors")
        (dest / "judge.json.tmp").write_text(json.dumps(info, indent=2))
        (dest / "judge.json.tmp").replace(dest / "judge.json")
    return info


def load_judge(folder: Path | None = None) -> Judge:
    """The bundled judge (or one in `folder`); EraseError saying how to rebuild it if the files
    are missing or unreadable."""
    from safetensors.torch import load_file

    if folder is None:
        from erase.toyworld import weights_dir

        folder = weights_dir()
    folder = Path(folder)
    try:
        info = json.loads((folder / "judge.json").read_text())
        cfg = JudgeConfig(**info["config"])
        net = JudgeNet(cfg)
        net.load_state_dict(load_file(str(folder / "judge.safetensors")))
    except Exception as e:  # missing, truncated or mismatched files
        raise EraseError(f"the toy-world judge in {folder} is missing or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); rebuild it with `{REBUILD}`") from None
    return Judge(net, cfg, info)
