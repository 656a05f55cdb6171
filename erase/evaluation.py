"""Before/after comparisons with fixed seeds, image grids and cross-attention heat maps."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image, ImageDraw

from erase.attention import AttentionRecorder, record_cross_attention
from erase.concepts import concept_positions
from erase.models import is_toyworld, sampling_autocast

__all__ = ["sampling_defaults", "generate", "compare", "image_grid", "attention_heatmap", "overlay_heatmap"]


def sampling_defaults(pipe) -> dict:
    """Steps and guidance for this model: the toy world's measured ones, else SD's usual 25 / 7.5."""
    if is_toyworld(pipe):
        from erase.toyworld import metrics

        return {"steps": metrics.DEFAULT_STEPS, "guidance_scale": metrics.DEFAULT_GUIDANCE}
    return {"steps": 25, "guidance_scale": 7.5}


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int | None = None,
             guidance_scale: float | None = None, result=None, batch_size: int = 8) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order; with ``result`` the erased weights are used."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    d = sampling_defaults(pipe)
    steps = steps or d["steps"]
    guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
    images: list[Image.Image] = []
    with result.applied(pipe) if result is not None else nullcontext():
        for i in range(0, len(prompts), batch_size):
            p = list(prompts[i : i + batch_size])
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
            with sampling_autocast(pipe):
                images += pipe(p, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens).images
    return images


def compare(pipe, result, prompts: Sequence[str], seeds: Sequence[int], **kw) -> tuple[list[Image.Image], list[Image.Image]]:
    """The same prompts and seeds through the base and the erased model."""
    return generate(pipe, prompts, seeds, **kw), generate(pipe, prompts, seeds, result=result, **kw)


def image_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cell: int = 128) -> Image.Image:
    """A labelled grid (rows x columns) of images, each scaled to ``cell`` pixels."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    left = 110 if row_labels else 0
    top = 16 if col_labels else 0
    grid = Image.new("RGB", (left + n_cols * cell, top + n_rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (left + c * cell, top + r * cell))
        if row_labels:
            draw.text((4, top + r * cell + cell // 2 - 6), str(row_labels[r])[:18], fill="black")
    if col_labels:
        for c, text in enumerate(col_labels):
            draw.text((left + c * cell + 4, 2), str(text)[: cell // 6], fill="black")
    return grid


@torch.no_grad()
def attention_heatmap(pipe, prompt: str, concept: str, seed: int = 0, *, steps: int | None = None,
                      guidance_scale: float | None = None, result=None) -> tuple[Image.Image, np.ndarray]:
    """Generate one image and the mean cross-attention its pixels give to the concept's tokens.

    The map averages heads, layers, denoising steps and the concept's tokens, each layer resized
    to the image size; it is returned in [0, 1] (normalised by its maximum) beside the image.
    """
    d = sampling_defaults(pipe)
    _, positions = concept_positions(pipe.tokenizer, prompt, concept)
    recorder = AttentionRecorder(detach=True, reduce_heads=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with result.applied(pipe) if result is not None else nullcontext():
        with record_cross_attention(pipe.unet, recorder), sampling_autocast(pipe):
            recorder.set_positions([positions])
            image = pipe(prompt, num_inference_steps=steps or d["steps"],
                         guidance_scale=d["guidance_scale"] if guidance_scale is None else guidance_scale,
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    total = torch.zeros(size, size)
    count = 0
    for records in recorder.records.values():
        for r in records:  # (1, Q, n)
            q = r.shape[1]
            side = int(round(q**0.5))
            amap = r[0].float().sum(-1).reshape(1, 1, side, side).cpu()
            total += torch.nn.functional.interpolate(amap, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            count += 1
    heat = (total / max(count, 1)).numpy()
    return image, heat


def overlay_heatmap(image: Image.Image, heat: np.ndarray, vmax: float | None = None, alpha: float = 0.55) -> Image.Image:
    """The heat map (jet-like colours) blended over the image; ``vmax`` shares a scale across maps."""
    vmax = float(heat.max()) if vmax is None else vmax
    h = np.clip(heat / max(vmax, 1e-8), 0, 1)
    rgb = np.stack([np.clip(1.5 - abs(4 * h - 3), 0, 1), np.clip(1.5 - abs(4 * h - 2), 0, 1), np.clip(1.5 - abs(4 * h - 1), 0, 1)], -1)
    colour = Image.fromarray((rgb * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), colour, alpha)
