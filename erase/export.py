"""Write an erasure out: a diffusers folder, a small delta file, a single-file checkpoint.

- ``export_diffusers``: a full folder that plain ``StableDiffusionPipeline.from_pretrained`` (SDXL:
  ``StableDiffusionXLPipeline``) loads, with a model card (README.md with the Hub's front matter,
  erase.cards).
- ``export_delta``: only the changed tensors, as safetensors, with metadata (method, concepts,
  base model, settings, the base UNet's fingerprint); each key names its component ('unet.…',
  'text_encoder.…', SDXL's 'text_encoder_2.…'); ``apply_delta`` writes it into a base pipeline,
  and also takes partial state dicts in diffusers names (what ESD's and UCE's own scripts save).
- ``export_lora`` / ``export_lora_folder`` (erase.lora): the change as a LoRA, kohya or
  diffusers/PEFT layout; the folder holds both and a model card.
- ``export_single_file``: one original-layout ``.safetensors`` for single-file tools
  (and ``StableDiffusionPipeline.from_single_file``; SDXL: the SGM layout of its original
  checkpoints, which ``StableDiffusionXLPipeline.from_single_file`` reads, erase.single_file).

Every file is written under a temporary name and renamed when complete; the base model's
files are never touched (the erased weights are swapped into the in-memory pipeline only).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from erase.api import ErasureResult, load_tensors, split_name
from erase.errors import EraseError
from erase.files import replace_path
from erase.models import TOYWORLD_MARKER, is_toyworld

__all__ = ["export_diffusers", "export_delta", "load_delta", "apply_delta", "export_single_file", "export_lora", "atomic_path"]


def export_lora(*args, **kwargs):
    """``erase.lora.export_lora``: the erasure as a LoRA file (kohya or diffusers layout)."""
    from erase.lora import export_lora as _export_lora

    return _export_lora(*args, **kwargs)


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


def check_output_path(final: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, before any work, an output folder that ``atomic_path`` could not write at the end:
    one that exists (without ``overwrite``), one under a file or in a folder that cannot be
    written, and one that is or holds one of ``inputs`` (replacing it would delete them)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise EraseError(f"output folder {final} exists; pass --overwrite to replace it")
    parent = final.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EraseError(f"cannot write {final}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EraseError(f"cannot write {final}: the folder {parent} is not writable")
    target = final.resolve()
    for given in inputs:
        if not isinstance(given, (str, Path)) or not Path(given).exists():  # a Hub id, a dict of settings
            continue
        src = Path(given).resolve()
        if src == target or target in src.parents:
            raise EraseError(f"output folder {final} would replace {given}, which this run reads; choose another --out")
    return final


@contextmanager
def _fp32_components(pipe):
    """Cast half-precision frozen parts to fp32 for saving, and back afterwards."""
    saved = {}
    for name in ("vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None and module.dtype != torch.float32:
            saved[name] = module.dtype
            module.to(torch.float32)
    try:
        yield pipe
    finally:
        for name, dtype in saved.items():
            getattr(pipe, name).to(dtype)


def export_diffusers(pipe, result: ErasureResult | None, folder: str | Path, overwrite: bool = False,
                     scores: dict | None = None) -> Path:
    """Save the erased pipeline (``pipe`` with ``result`` applied) as a diffusers folder, with a
    model card (README.md, Hub front matter). ``scores``: {concept: {'UA': …, 'IRA': …, 'CRA': …}}
    measured on it, for the card (default: ``result.scores`` where the app set them)."""
    from contextlib import nullcontext

    from erase.cards import model_card, write_card

    fingerprint = _fingerprint(result, pipe) if result is not None else None
    with atomic_path(folder, overwrite) as tmp:
        from erase.models import _quiet_libraries

        with result.applied(pipe) if result is not None else nullcontext(), _fp32_components(pipe), _quiet_libraries():
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        if result is not None:
            meta = dict(result.metadata(), base_fingerprint=json.dumps(fingerprint))
            (tmp / "erase.json").write_text(json.dumps(meta, indent=2))
            from erase.lora import base_family

            write_card(tmp, model_card(result, kind="model", scores=scores or getattr(result, "scores", None), fingerprint=fingerprint,
                                       family=base_family(result, pipe)))
        if is_toyworld(pipe):  # still a toy-world model: keeps its prompts, presets and judge
            (tmp / TOYWORLD_MARKER).write_text(json.dumps({"derived_from": pipe.erase_info.source}, indent=2))
    return Path(folder)


def _fingerprint(result: ErasureResult, base) -> dict | None:
    """The base UNet's fingerprint: recorded on the result (a loaded file's), or taken from ``base``."""
    from erase.fingerprint import base_fingerprint, parse_fingerprint

    recorded = parse_fingerprint(getattr(result, "base_fingerprint", None))
    if recorded is not None:
        return recorded
    return base_fingerprint(base, exclude=result.tensors) if base is not None else None


def export_delta(result: ErasureResult, path: str | Path, overwrite: bool = False, base=None) -> Path:
    """Write only the changed tensors, keyed '<component>.<parameter>', with the erasure's metadata.
    ``base``: the base pipeline; its UNet fingerprint is recorded, and checked by ``apply_delta``."""
    from safetensors.torch import save_file

    if not result.tensors:
        raise EraseError("the erasure changed no weights: nothing to export")
    meta = result.metadata()
    fingerprint = _fingerprint(result, base)
    if fingerprint is not None:
        meta["base_fingerprint"] = json.dumps(fingerprint)
    with atomic_path(path, overwrite) as tmp:
        tensors = {".".join(split_name(k)): v.detach().to("cpu").contiguous() for k, v in result.tensors.items()}
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors keyed as ErasureResult.tensors, metadata) of a delta file: an erase delta, or a
    partial state dict in diffusers parameter names (ESD's and UCE's scripts' results; metadata
    ``format`` is then 'state-dict'). LoRAs, single-file checkpoints and anything else are refused.
    Deltas written before text-encoder tensors existed (all 'unet.…') load as before."""
    from erase.reload import read_weights

    kind, tensors, meta = read_weights(path)
    if kind == "lora":
        raise EraseError(f"{path} is a LoRA, not a delta: load it with erase.reload.load_erasure (or pipe.load_lora_weights)")
    if kind == "state-dict":
        meta = dict(meta, format="state-dict")
    return tensors, meta


def apply_delta(pipe, path: str | Path, check_base: bool = True) -> dict[str, str]:
    """Write a delta's (or partial state dict's) tensors into ``pipe`` (in memory); returns its
    metadata. Every name and shape is checked first, and the recorded base-model fingerprint
    unless ``check_base`` is False; nothing is written unless all fit."""
    from erase.fingerprint import check_base as check_fingerprint
    from erase.reload import check_tensors, fit_names

    tensors, meta = load_delta(path)
    if check_base:
        check_fingerprint(pipe, meta.get("base_fingerprint"), str(path), meta.get("base_model"))
    tensors = fit_names(pipe, tensors)
    check_tensors(pipe, tensors, str(path))
    load_tensors(pipe, tensors)
    return meta


def export_single_file(pipe, result: ErasureResult | None, path: str | Path, overwrite: bool = False,
                       dtype: torch.dtype = torch.float32, text_encoder_layout: str = "auto") -> Path:
    """Save the erased pipeline as one original-layout ``.safetensors`` checkpoint. The text
    encoder goes in the layout single-file tools expect: 'clip' (SD 1.x) or 'openclip' (SD 2.x);
    'auto' picks by the model family (and is the only choice for SDXL, whose two encoders have
    fixed layouts)."""
    from contextlib import nullcontext

    from safetensors.torch import save_file

    from erase.single_file import choose_text_encoder_layout, pipeline_to_ldm

    path = Path(path)
    layout = choose_text_encoder_layout(pipe, text_encoder_layout)  # checked before anything is written
    if path.suffix != ".safetensors":
        raise EraseError(f"single-file checkpoints are written as .safetensors, got {path.name}")
    with atomic_path(path, overwrite) as tmp:
        meta = result.metadata() if result is not None else {"format": "erase-single-file"}
        with result.applied(pipe) if result is not None else nullcontext():
            # saved inside the block: the state dict's tensors alias the live (erased) weights
            save_file(pipeline_to_ldm(pipe, dtype, layout), str(tmp), metadata=meta)
    return path
