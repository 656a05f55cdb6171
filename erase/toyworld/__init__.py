"""The bundled concept world: a renderer, captions, a tiny Stable Diffusion model trained on
it (``default_model_path()``), and a judge that scores erasure on it (``judge.load_judge``).
"""

from __future__ import annotations

import json
from pathlib import Path

from erase.errors import EraseError
from erase.toyworld.concepts import (
    COLOURS,
    KINDS,
    SHAPES,
    STYLES,
    all_prompts,
    concept_kind,
    prompts_for,
    retain_prompts,
)

REBUILD = ("python scripts/train_toyworld.py --work-dir toyworld-cache --resume "
           "(then --export-only; --judge for the judge)")
# Files a usable bundled pipeline must have.
_REQUIRED = (
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
)


def weights_dir() -> Path:
    return Path(__file__).resolve().parent / "weights"


def _check_safetensors(path: Path) -> None:
    """Read the header and check the file is as long as it says (cheap; catches truncation)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise ValueError("header longer than the file")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes, expected {8 + n + end}")


def check_model_folder(folder: Path) -> Path:
    """Raise EraseError (with rebuild instructions) unless `folder` holds a complete model."""
    folder = Path(folder)
    for rel in _REQUIRED:
        p = folder / rel
        if not p.is_file():
            raise EraseError(f"the bundled toy-world model is incomplete: {p} is missing; rebuild it with `{REBUILD}`")
        try:
            if p.suffix == ".safetensors":
                _check_safetensors(p)
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except Exception as e:
            raise EraseError(f"the bundled toy-world model is corrupt: {p} is unreadable ({e}); "
                             f"rebuild it with `{REBUILD}`") from None
    return folder


def default_model_path() -> Path:
    """The bundled diffusers folder (loads with StableDiffusionPipeline.from_pretrained)."""
    return check_model_folder(weights_dir())


__all__ = [
    "COLOURS", "KINDS", "SHAPES", "STYLES", "EraseError", "all_prompts", "concept_kind",
    "default_model_path", "prompts_for", "retain_prompts", "weights_dir", "check_model_folder",
]
