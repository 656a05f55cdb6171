"""Write an erasure out: a diffusers folder, a small delta file, a single-file checkpoint.

- ``export_diffusers``: a full folder that plain ``StableDiffusionPipeline.from_pretrained`` loads.
- ``export_delta``: only the changed tensors, as safetensors, with metadata (method, concepts,
  base model, settings); each key names its component ('unet.…', 'text_encoder.…');
  ``apply_delta`` writes it into a base pipeline.
- ``export_single_file``: one original-layout ``.safetensors`` for single-file tools
  (and ``StableDiffusionPipeline.from_single_file``).

Every file is written under a temporary name and renamed when complete; the base model's
files are never touched (the erased weights are swapped into the in-memory pipeline only).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from erase.api import ErasureResult, load_tensors, qualified_name, split_name
from erase.errors import EraseError
from erase.files import replace_path
from erase.models import TOYWORLD_MARKER, is_toyworld

__all__ = ["export_diffusers", "export_delta", "load_delta", "apply_delta", "export_single_file", "atomic_path"]


@contextmanager
def atomic_path(final: str | Path, overwrite: bool = False):
    """Yield a temporary sibling path; on success rename it to ``final`` (replacing it if allowed)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise EraseError(f"{final} exists; refusing to overwrite it (pass overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o644)  # safetensors writes 0600; exports are meant to be shared
        replace_path(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


@contextmanager
def _fp32_components(pipe):
    """Cast half-precision frozen parts to fp32 for saving, and back afterwards."""
    saved = {}
    for name in ("vae", "text_encoder"):
        module = getattr(pipe, name)
        if module.dtype != torch.float32:
            saved[name] = module.dtype
            module.to(torch.float32)
    try:
        yield pipe
    finally:
        for name, dtype in saved.items():
            getattr(pipe, name).to(dtype)


def export_diffusers(pipe, result: ErasureResult | None, folder: str | Path, overwrite: bool = False) -> Path:
    """Save the erased pipeline (``pipe`` with ``result`` applied) as a diffusers folder."""
    from contextlib import nullcontext

    with atomic_path(folder, overwrite) as tmp:
        from erase.models import _quiet_libraries

        with result.applied(pipe) if result is not None else nullcontext(), _fp32_components(pipe), _quiet_libraries():
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        if result is not None:
            (tmp / "erase.json").write_text(json.dumps(result.metadata(), indent=2))
        if is_toyworld(pipe):  # still a toy-world model: keeps its prompts, presets and judge
            (tmp / TOYWORLD_MARKER).write_text(json.dumps({"derived_from": pipe.erase_info.source}, indent=2))
    return Path(folder)


def export_delta(result: ErasureResult, path: str | Path, overwrite: bool = False) -> Path:
    """Write only the changed tensors, keyed '<component>.<parameter>', with the erasure's metadata."""
    from safetensors.torch import save_file

    if not result.tensors:
        raise EraseError("the erasure changed no weights: nothing to export")
    with atomic_path(path, overwrite) as tmp:
        tensors = {".".join(split_name(k)): v.detach().to("cpu").contiguous() for k, v in result.tensors.items()}
        save_file(tensors, str(tmp), metadata=result.metadata())
    return Path(path)


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors keyed as ErasureResult.tensors, metadata) of a delta file; refuses files that are
    not erase deltas. Deltas written before text-encoder tensors existed (all 'unet.…') load as before."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EraseError(f"delta file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {qualified_name(*split_name(k)): f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise EraseError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != "erase-delta":
        raise EraseError(f"{path} is not an erase delta file (metadata format is {meta.get('format')!r})")
    return tensors, meta


def apply_delta(pipe, path: str | Path) -> dict[str, str]:
    """Write a delta's tensors into ``pipe`` (in memory); returns the delta's metadata."""
    tensors, meta = load_delta(path)
    load_tensors(pipe, tensors)
    return meta


def export_single_file(pipe, result: ErasureResult | None, path: str | Path, overwrite: bool = False,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Save the erased pipeline as one original-layout ``.safetensors`` checkpoint."""
    from contextlib import nullcontext

    from safetensors.torch import save_file

    from erase.single_file import pipeline_to_ldm

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EraseError(f"single-file checkpoints are written as .safetensors, got {path.name}")
    with atomic_path(path, overwrite) as tmp:
        meta = result.metadata() if result is not None else {"format": "erase-single-file"}
        with result.applied(pipe) if result is not None else nullcontext():
            # saved inside the block: the state dict's tensors alias the live (erased) weights
            save_file(pipeline_to_ldm(pipe, dtype), str(tmp), metadata=meta)
    return path
