"""Load an erasure back from a file, onto the base model it was made for.

    result = load_erasure(pipe, "no-star.safetensors")          # delta, UNet state dict or LoRA
    with result.applied(pipe): ...                              # render / score / export it like a fresh erasure

Three kinds of file are read (safetensors only):

- ``delta``: ``export_delta``'s files (metadata ``format: erase-delta``);
- ``state-dict``: a partial state dict in diffusers parameter names, the erased values of the
  tensors that changed, as ESD's and UCE's own scripts save them (bare UNet names, or
  'unet.' / 'text_encoder.' / 'text_encoder_2.' prefixed);
- ``lora``: a LoRA in the kohya or the diffusers/PEFT layout (ours or another tool's). diffusers
  itself reads it (``pipe.load_lora_weights``, which converts the kohya layout), PEFT gives each
  layer's ΔW, and the adapters are unloaded again: the erased weights are base + ΔW, as
  ``fuse_lora`` would make them.

Every name and shape is checked against the model before anything is written, and a file that
records the fingerprint of its base UNet (``erase.fingerprint``) is refused on another model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from erase.errors import EraseError

__all__ = ["read_weights", "file_kind", "fit_names", "check_tensors", "load_erasure", "lora_tensors", "KINDS"]

KINDS = ("delta", "state-dict", "lora")
_SINGLE_FILE = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
_ADAPTER = "erase_readback"


def _is_lora_key(key: str) -> bool:
    return key.startswith(("lora_unet_", "lora_te")) or any(
        part in key for part in (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", ".lora.down.", ".lora.up.", "_lora.down.", "_lora.up."))


def file_kind(keys, meta: dict, source: str = "the file") -> str:
    """'delta', 'state-dict' or 'lora' from a file's keys and metadata; EraseError for anything else."""
    keys = list(keys)
    if meta.get("format") == "erase-delta":
        return "delta"
    if not keys:
        raise EraseError(f"{source} holds no tensors")
    if any(_is_lora_key(k) for k in keys):
        return "lora"
    if any(k.startswith(_SINGLE_FILE) for k in keys):
        raise EraseError(f"{source} is a single-file checkpoint, not a delta or LoRA: load it as the model (--model)")
    odd = next((k for k in keys if "." not in k or not k.endswith((".weight", ".bias"))), None)
    if odd is not None:
        raise EraseError(f"{source} is not an erase delta, a state dict of diffusers UNet/text-encoder tensors or a LoRA (key {odd!r})")
    return "state-dict"


def read_weights(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """(kind, tensors, metadata) of a safetensors file. Delta and state-dict tensors are keyed as
    ErasureResult.tensors (bare UNet names, 'text_encoder.' prefixed); a LoRA's as in the file."""
    from safetensors import safe_open

    from erase.api import qualified_name, split_name

    path = Path(path)
    if not path.is_file():
        raise EraseError(f"file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise EraseError(f"{path.name} is not a .safetensors file (pickled files are refused: they can run code)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            kind = file_kind(keys, meta, str(path))
            tensors = {k: f.get_tensor(k) for k in keys}
    except EraseError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EraseError(f"{path} is not a readable safetensors file: {first}") from None
    if kind != "lora":
        tensors = {qualified_name(*split_name(k)): v for k, v in tensors.items()}
    return kind, tensors, meta


def fit_names(pipe, tensors: dict) -> dict:
    """Text-encoder keys spelled for ``pipe``'s CLIPs: with or without the 'text_model.' level
    (transformers 4 has it, transformers 5 drops it from CLIPTextModel); a name the encoder has
    as it is (SDXL's top-level 'text_projection.weight') and other keys unchanged."""
    from erase.api import qualified_name, split_name

    own: dict[str, set] = {}
    out = {}
    for key, value in tensors.items():
        component, name = split_name(key)
        module = getattr(pipe, component, None) if component.startswith("text_encoder") else None
        if module is not None:
            if component not in own:
                own[component] = {n for n, _ in module.named_parameters()}
            nested = hasattr(module, "text_model")
            if name in own[component]:
                pass
            elif nested and not name.startswith("text_model."):
                name = "text_model." + name
            elif not nested and name.startswith("text_model."):
                name = name.removeprefix("text_model.")
        out[qualified_name(component, name)] = value
    return out


def check_tensors(pipe, tensors: dict, source: str = "the file") -> None:
    """EraseError (one line) unless every tensor names a parameter of ``pipe`` with its shape."""
    from erase.api import split_name

    params: dict[str, dict] = {}
    for key, value in tensors.items():
        component, name = split_name(key)
        if component not in params:
            module = getattr(pipe, component, None)
            if module is None:
                raise EraseError(f"{source} changes a {component}, which this pipeline does not have: it was made for another model")
            params[component] = dict(module.named_parameters())
        target = params[component].get(name)
        if target is None:
            raise EraseError(f"{source} was made for another model: this model's {component} has no tensor {name!r}")
        if tuple(target.shape) != tuple(value.shape):
            raise EraseError(f"{source} was made for another model: {component} tensor {name!r} has shape "
                             f"{tuple(value.shape)} there, {tuple(target.shape)} here")


def _nonzero_modules(tensors: dict) -> int:
    """How many LoRA modules of a file (either layout) have a non-zero up/B weight."""
    ups = [v for k, v in tensors.items() if k.endswith((".lora_B.weight", ".lora_up.weight", ".lora.up.weight", "_lora.up.weight"))]
    return sum(1 for v in ups if bool(v.abs().max() > 0))


def _first_line(error: Exception) -> str:
    """The line of a (multi-line) library error that says what is wrong: a size mismatch where
    torch lists them under 'Error(s) in loading state_dict…:', else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return next((line for line in lines if "mismatch" in line), lines[0])


def lora_tensors(pipe, path: str | Path, tensors: dict | None = None) -> dict[str, torch.Tensor]:
    """The weights ``pipe`` would use with the LoRA at ``path`` fused in (base + ΔW per layer),
    keyed as ErasureResult.tensors; read by diffusers' ``load_lora_weights`` and unloaded again.
    ``pipe``'s own weights are not changed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from erase.api import qualified_name
    from erase.models import _quiet_libraries

    if not hasattr(pipe, "load_lora_weights"):
        raise EraseError(f"{type(pipe).__name__} cannot load LoRAs")
    if any(isinstance(m, BaseTunerLayer) for c in ("unet", "text_encoder", "text_encoder_2")
           for m in (getattr(pipe, c).modules() if getattr(pipe, c, None) is not None else ())):
        raise EraseError("this pipeline already has LoRA adapters loaded; load the file onto a plain base model")
    if tensors is None:
        tensors = read_weights(path)[1]
    want = _nonzero_modules(tensors)
    out: dict[str, torch.Tensor] = {}
    try:
        with _quiet_libraries():
            pipe.load_lora_weights(str(path), adapter_name=_ADAPTER)
        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, component, None)
            if module is None:
                continue
            for name, layer in module.named_modules():
                if isinstance(layer, BaseTunerLayer) and _ADAPTER in getattr(layer, "lora_A", {}):
                    with torch.no_grad():
                        delta = layer.get_delta_weight(_ADAPTER)
                        weight = layer.get_base_layer().weight
                        if bool(delta.abs().max() > 0):
                            out[qualified_name(component, name + ".weight")] = (weight.float() + delta.float()).to("cpu", weight.dtype)
    except EraseError:
        raise
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise EraseError(f"{path} does not fit this model (diffusers could not load it as a LoRA): {_first_line(e)[:300]}") from None
    finally:
        try:
            pipe.unload_lora_weights()
        except Exception:  # noqa: BLE001 - nothing was loaded
            pass
    if len(out) != want:
        raise EraseError(f"{path} was made for another model: diffusers applied {len(out)} of its {want} LoRA layers to this one")
    return out


def _json(meta: dict, key: str, default):
    try:
        return json.loads(meta[key]) if key in meta else default
    except (json.JSONDecodeError, TypeError):
        return default


def load_erasure(pipe, path: str | Path, *, concepts=None, check_base: bool = True):
    """An ``ErasureResult`` from a delta, a partial UNet state dict or a LoRA file, for ``pipe``
    (the base model, as loaded: its current weights are the result's ``original``).

    ``concepts``: the erased concepts, for files that do not record them (state dicts, other
    tools' LoRAs); the file's own list wins. ``check_base``: refuse a file whose recorded base
    UNet fingerprint differs from ``pipe``'s (names and shapes are always checked)."""
    from erase.api import ErasureResult, current_tensors, normalise_concepts
    from erase.fingerprint import check_base as check_fingerprint

    kind, tensors, meta = read_weights(path)
    source = str(path)
    if check_base:
        check_fingerprint(pipe, meta.get("base_fingerprint"), source, meta.get("base_model"))
    if kind == "lora":
        erased = lora_tensors(pipe, path, tensors)
    else:
        erased = fit_names(pipe, tensors)
        check_tensors(pipe, erased, source)
    recorded = _json(meta, "concepts", None)
    names = recorded if isinstance(recorded, list) and recorded else concepts
    names = normalise_concepts(names) if names else []
    config = _json(meta, "config", {})
    stats = _json(meta, "stats", {})
    stats = dict(stats if isinstance(stats, dict) else {}, loaded_from=source, file_kind=kind,
                 changed_tensors=len(erased), changed_parameters=sum(t.numel() for t in erased.values()))
    if kind == "lora":
        stats.update(lora_layout=meta.get("lora_layout") or ("kohya" if any(k.startswith("lora_") for k in tensors) else "diffusers"),
                     lora_rank=meta.get("lora_rank"), lora_left_out=_json(meta, "lora_left_out", []))
    result = ErasureResult(
        method=meta.get("method") or f"unknown ({kind} file)", concepts=names,
        base_model=meta.get("base_model") or "unknown", config=config if isinstance(config, dict) else {},
        tensors={k: v.detach().to("cpu", torch.float32) for k, v in erased.items()},
        original=current_tensors(pipe, erased), stats=stats,
    )
    if meta.get("base_fingerprint"):
        result.base_fingerprint = meta["base_fingerprint"]
    return result
