"""An erasure as a LoRA: each changed weight's difference as a low-rank product (truncated SVD).

    export_lora(result, "no-star.safetensors", rank=16, format="kohya", base=pipe)   # A1111, Forge, ComfyUI
    export_lora(result, "no-star-peft.safetensors", format="diffusers", base=pipe)    # diffusers / PEFT
    pipe.load_lora_weights("no-star.safetensors")                                      # either file, plain diffusers

The difference ΔW = W_erased − W_base of every changed Linear weight (and Conv2d weight, reshaped
to (out, in·kh·kw) as kohya's tools do) is factorised by SVD: ΔW ≈ up @ down with ``rank``
singular values (``None`` / 'full': all of them, exact up to float rounding), split evenly
(up = U·√S, down = √S·Vᵀ). Every tool applies up·down unchanged: the diffusers file has no
alphas (scale 1); the kohya file has one alpha, the largest rank R, and each up factor scaled by r/R.

Layouts, through diffusers' own writers and converters: 'diffusers' is the PEFT layout that
``StableDiffusionPipeline.save_lora_weights`` writes ('unet.<module>.lora_A.weight',
'text_encoder.text_model.<module>.lora_B.weight'); 'kohya' is that converted by
``diffusers.utils.convert_state_dict_to_kohya`` ('lora_unet_<module>.lora_down.weight', '.alpha',
'lora_te_…' for the one text encoder of SD 1.x/2.x, as kohya's sd-scripts write it).

SDXL: ``StableDiffusionXLPipeline.save_lora_weights`` writes the diffusers file, with a
'text_encoder_2.' part for the second text encoder; the kohya file names the two encoders
'lora_te1_' and 'lora_te2_' (the converter's names, which A1111, ComfyUI and diffusers read) and
the UNet 'lora_unet_<diffusers module>' (sd-scripts' own SDXL LoRAs use the original UNet's
names, 'lora_unet_input_blocks_…'; the three loaders read both).

What a LoRA cannot carry: biases, norm weights, embeddings and SDXL's ``text_projection`` (the
pooled embedding's projection: A1111 has no LoRA slot for it) have no place in a layout that
A1111, ComfyUI and diffusers all read, so a changed one is left out (listed in the metadata's
``lora_left_out`` and in ``LoraFactors.left_out``, with a warning). UCE changes only weight
matrices; ESD-x also moves the output projections' biases, AdvUnlearn the text encoders' biases
and layer norms (on SDXL also text_projection): for those the LoRA is an approximation even at
full rank (BENCHMARKS.md measures what it costs; tests/test_sdxl_exports.py on SDXL).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from erase.errors import EraseError

__all__ = ["FORMATS", "DEFAULT_RANK", "LORA_WEIGHT_NAME", "LoraFactors", "parse_rank", "factorise", "peft_layers",
           "kohya_state_dict", "lora_metadata", "base_family", "export_lora", "export_lora_folder", "lora_file_name"]

FORMATS = ("kohya", "diffusers")
# Chosen from the toy-world measurement in BENCHMARKS.md (LoRA rank suite).
DEFAULT_RANK = 16
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights(folder) looks for
_EMBEDDING = re.compile(r"(^|\.)[^.]*embedding\.weight$")  # nn.Embedding tables (token, position, class)
_TEXT_PROJECTION = re.compile(r"(^|\.)text_projection\.weight$")  # SDXL's pooled projection (an OpenCLIP parameter in A1111)


def parse_rank(rank) -> int | None:
    """A rank setting -> a positive int, or None for full rank ('full', None)."""
    bad = EraseError(f"LoRA rank must be a positive whole number or 'full', got {rank!r}")
    if rank is None:
        return None
    if isinstance(rank, str):
        text = rank.strip().lower()
        if text == "full":
            return None
        try:
            rank = int(text)
        except ValueError:
            raise bad from None
    if isinstance(rank, float) and rank.is_integer():
        rank = int(rank)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise bad
    if rank <= 0:
        raise EraseError(f"LoRA rank must be at least 1 (or 'full'), got {rank}")
    return rank


def lora_able(key: str, value: torch.Tensor) -> bool:
    """Whether a changed tensor is a Linear (2-D) or Conv2d (4-D) weight a LoRA layer can carry
    (in every tool: not an embedding table, not SDXL's text_projection)."""
    return key.endswith(".weight") and value.ndim in (2, 4) and not _EMBEDDING.search(key) and not _TEXT_PROJECTION.search(key)


@dataclass
class LoraFactors:
    """ΔW ≈ up @ down per module. Keys: 'unet.<module>' / 'text_encoder[_2].<module>' (module names as
    the pipeline's ``named_modules``); down (r, in[, kh, kw]), up (out, r[, 1, 1])."""

    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    errors: dict[str, float]  # ‖ΔW − up@down‖_F / ‖ΔW‖_F per module
    left_out: list[str] = field(default_factory=list)  # changed tensors no LoRA layer carries (ErasureResult keys)
    rank: int | None = None  # as asked (None: full)

    def ranks(self) -> dict[str, int]:
        return {m: int(d.shape[0]) for m, d in self.down.items()}

    def max_rank(self) -> int:
        return max(self.ranks().values())

    def delta(self, module: str) -> torch.Tensor:
        """up @ down in the weight's shape."""
        down, up = self.down[module], self.up[module]
        d = up.flatten(1).double() @ down.flatten(1).double()
        return d.reshape(up.shape[0], *down.shape[1:]) if down.ndim == 4 else d

    def merged(self, original) -> dict[str, torch.Tensor]:
        """The weights a LoRA-loaded model uses (base + up @ down), keyed as ErasureResult.tensors.
        ``original``: the base values of those tensors (a mapping with the same keys)."""
        from erase.api import qualified_name

        out = {}
        for module in self.down:
            component, name = module.split(".", 1)
            key = qualified_name(component, name + ".weight")
            base = original[key]
            out[key] = (base.double() + self.delta(module).to(base.device)).to(base.dtype)
        return out


def _base_values(result, keys, base) -> dict[str, torch.Tensor]:
    from erase.api import current_tensors

    have = {k: result.original[k] for k in keys if k in (result.original or {})}
    missing = [k for k in keys if k not in have]
    if missing and base is not None:
        have.update(current_tensors(base, missing))
        missing = [k for k in keys if k not in have]
    if missing:
        raise EraseError("the erasure result holds no base values of its tensors (the app drops them): pass base=<the base pipeline>")
    return have


def factorise(result, rank=DEFAULT_RANK, base=None) -> LoraFactors:
    """Truncated SVD of every changed LoRA-able weight's difference. ``rank``: int or 'full'/None;
    a weight smaller than ``rank`` keeps all its singular values. ``base``: the base pipeline,
    needed when ``result.original`` was dropped."""
    from erase.api import split_name

    r = parse_rank(rank)
    if not result.tensors:
        raise EraseError("the erasure changed no weights: nothing to export")
    keys = [k for k, v in result.tensors.items() if lora_able(k, v)]
    left_out = [k for k in result.tensors if k not in keys]
    if not keys:
        raise EraseError(f"the erasure changed no Linear or Conv2d weights (only {len(left_out)} biases/norms): a LoRA cannot carry it")
    largest = max(min(result.tensors[k].shape[0], result.tensors[k][0].numel()) for k in keys)
    if r is not None and r > largest:
        raise EraseError(f"LoRA rank {r} is above the size of every changed weight (largest possible rank {largest}); use at most {largest} or 'full'")
    original = _base_values(result, keys, base)
    down, up, errors = {}, {}, {}
    for k in keys:
        new = result.tensors[k]
        diff = (new.detach().to("cpu", torch.float64) - original[k].detach().to("cpu", torch.float64))
        out_dim = diff.shape[0]
        mat = diff.reshape(out_dim, -1)
        U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
        keep = len(S) if r is None else min(r, len(S))
        root = S[:keep].sqrt()
        u = U[:, :keep] * root
        d = root[:, None] * Vh[:keep]
        total = float(S.pow(2).sum())
        errors_k = float(S[keep:].pow(2).sum() / total) ** 0.5 if total > 0 else 0.0
        component, name = split_name(k)
        module = f"{component}.{name.removesuffix('.weight')}"
        if diff.ndim == 4:
            d = d.reshape(keep, *diff.shape[1:])
            u = u.reshape(out_dim, keep, 1, 1)
        down[module] = d.to(torch.float32).contiguous()
        up[module] = u.to(torch.float32).contiguous()
        errors[module] = errors_k
    return LoraFactors(down=down, up=up, errors=errors, left_out=left_out, rank=r)


def _file_module(component: str, module: str) -> str:
    """A module name as LoRA files spell it: CLIP text-encoder modules under 'text_model.' (the
    layout of transformers 4, which every LoRA tool reads; transformers 5 drops that level), but
    a projection model's own 'text_projection' beside it."""
    if component.startswith("text_encoder") and not module.startswith(("text_model.", "text_projection")):
        return "text_model." + module
    return module


def peft_layers(factors: LoraFactors, dtype: torch.dtype = torch.float32) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {'<module>.lora_A.weight': down, '<module>.lora_B.weight': up}}, the layers
    ``save_lora_weights`` takes (PEFT names; text-encoder modules under 'text_model.')."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for module in factors.down:
        component, name = module.split(".", 1)
        name = _file_module(component, name)
        layer = out.setdefault(component, {})
        layer[f"{name}.lora_A.weight"] = factors.down[module].to(dtype).contiguous()
        layer[f"{name}.lora_B.weight"] = factors.up[module].to(dtype).contiguous()
    return out


def _pad_out_proj(te: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """diffusers (0.4x) converts kohya text-encoder attention keys only when an out_proj key is
    among them and silently drops q/k/v otherwise; a zero LoRA on one out_proj (it adds exactly
    nothing, in any tool) makes every loader take the rest."""
    attn = [k for k in te if re.search(r"\.self_attn\.[qkv]_proj\.lora_A\.weight$", k)]
    if attn and not any(".self_attn.out_proj." in k for k in te):
        layer = attn[0].split(".self_attn.")[0]
        width = te[attn[0]].shape[1]
        te[f"{layer}.self_attn.out_proj.lora_A.weight"] = torch.zeros(1, width, dtype=dtype)
        te[f"{layer}.self_attn.out_proj.lora_B.weight"] = torch.zeros(width, 1, dtype=dtype)


def kohya_state_dict(factors: LoraFactors, text_encoders: int | None = None, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The kohya layout ('lora_unet_…', 'lora_te_…'), converted from the PEFT layout by diffusers'
    ``convert_state_dict_to_kohya``; one text encoder (SD 1.x/2.x) is 'lora_te_', as sd-scripts,
    A1111 and ComfyUI name it, two (SDXL) are 'lora_te1_' and 'lora_te2_' as the converter writes
    them. ``text_encoders``: how many the model has (None: 2 if the factors touch text_encoder_2)."""
    from diffusers.utils import convert_state_dict_to_kohya

    layers = peft_layers(factors, dtype)
    if text_encoders is None:
        text_encoders = 2 if "text_encoder_2" in layers else 1
    for component in ("text_encoder", "text_encoder_2"):
        _pad_out_proj(layers.get(component, {}), dtype)
    # One alpha for every module (the largest rank R), each up factor scaled by r/R: every tool
    # applies alpha/r, so up·down comes out unchanged. (With an alpha per module diffusers builds an
    # alpha_pattern whose text-encoder keys match no module, and scales those modules wrongly.)
    top = max(v.shape[0] for part in layers.values() for k, v in part.items() if k.endswith(".lora_A.weight"))
    for part in layers.values():
        for k in list(part):
            if k.endswith(".lora_B.weight"):
                r = part[k].shape[1]
                if r != top:
                    part[k] = (part[k].double() * (r / top)).to(dtype)
    flat = {f"{component}.{k}": v for component, part in layers.items() for k, v in part.items()}
    kohya = convert_state_dict_to_kohya(flat)
    if text_encoders == 1:
        kohya = {(k.replace("lora_te1_", "lora_te_", 1) if k.startswith("lora_te1_") else k): v for k, v in kohya.items()}
    # alpha: a float scalar, as sd-scripts stores it
    return {k: (torch.tensor(float(top)) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}


_ARCH = {"sd1": ("sd_v1", "stable-diffusion-v1/lora"), "sd2": ("sd_v2", "stable-diffusion-v2-768-v/lora"),
         "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora")}


def base_family(result, base=None) -> str | None:
    """'sd1' / 'sd2' / 'sdxl' / … of the base model: its loader's record, else its shape; without a
    base, 'sdxl' if the erasure changed a second text encoder (else unknown)."""
    info = getattr(base, "erase_info", None)
    if info is not None and getattr(info, "family", None):
        return info.family
    if base is not None and getattr(base, "unet", None) is not None:
        from erase.models import model_family as family_of

        return family_of(base)
    return "sdxl" if any(k.startswith("text_encoder_2.") for k in getattr(result, "tensors", {})) else None


def lora_metadata(result, factors: LoraFactors, layout: str, fingerprint: dict | None = None,
                  family: str | None = None) -> dict[str, str]:
    """The file's metadata: the erasure's (method, concepts, base model, settings), the LoRA's
    (rank, layout, left-out tensors, fingerprint of the base UNet) and the keys kohya's tools
    and A1111/ComfyUI show (ss_network_*, modelspec.*)."""
    meta = dict(result.metadata())
    meta["format"] = "pt"  # safetensors' convention for torch tensors; erase_format names what it is
    ranks = factors.ranks()
    rank = "full" if factors.rank is None else str(factors.rank)
    errors = list(factors.errors.values())
    meta.update({
        "erase_format": "erase-lora",
        "lora_layout": layout,
        "lora_rank": rank,
        "lora_max_rank": str(max(ranks.values())),
        "lora_modules": str(len(ranks)),
        "lora_relative_error": json.dumps({"max": max(errors), "mean": sum(errors) / len(errors)}),
        "lora_left_out": json.dumps(factors.left_out),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks.values())),
        "ss_network_alpha": str(max(ranks.values())),
        "modelspec.title": f"erase: {', '.join(result.concepts)} ({result.method})",
        "modelspec.description": f"Concept erasure of {', '.join(result.concepts)} with {result.method} (erase {meta.get('erase_version', '')}), "
                                 f"as a rank-{rank} LoRA of base model {result.base_model}",
    })
    if fingerprint is not None:
        meta["base_fingerprint"] = json.dumps(fingerprint)
    if family in _ARCH:
        meta["ss_base_model_version"], meta["modelspec.architecture"] = _ARCH[family]
        meta["modelspec.sai_model_spec"] = "1.0.0"
    return meta


def export_lora(result, path: str | Path, rank=DEFAULT_RANK, format: str = "kohya", *, base=None,
                overwrite: bool = False, dtype: torch.dtype = torch.float32, factors: LoraFactors | None = None) -> Path:
    """Write ``result`` as a LoRA ``.safetensors`` file in the ``format`` layout ('kohya' or
    'diffusers'). ``base``: the base pipeline (its UNet fingerprint goes into the metadata; its
    weights stand in for ``result.original`` where that was dropped). ``factors``: reuse an
    earlier ``factorise`` (both layouts from one SVD). Written atomically."""
    from safetensors.torch import save_file

    from erase.export import atomic_path

    if format not in FORMATS:
        raise EraseError(f"unknown LoRA format {format!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise EraseError(f"LoRA files are written as .safetensors, got {path.name}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise EraseError(f"LoRA dtype must be float32, float16 or bfloat16, got {dtype}")
    if path.exists() and not overwrite:
        raise EraseError(f"{path} exists; refusing to overwrite it (pass overwrite)")
    factors = factors if factors is not None else factorise(result, rank, base)
    if factors.left_out:
        warnings.warn(f"{len(factors.left_out)} changed tensor(s) are not Linear/Conv2d weights and stay out of the LoRA "
                      f"(e.g. {factors.left_out[0]}); the merged model or the delta carries them", RuntimeWarning, stacklevel=2)
    family = base_family(result, base)
    from erase.export import _fingerprint

    meta = lora_metadata(result, factors, format, _fingerprint(result, base), family)
    two_encoders = family == "sdxl" or getattr(base, "text_encoder_2", None) is not None
    with atomic_path(path, overwrite) as tmp:
        if format == "kohya":
            # None: kohya_state_dict counts two where the factors touch text_encoder_2
            save_file(kohya_state_dict(factors, 2 if two_encoders else None, dtype), str(tmp), metadata=meta)
        else:
            from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

            layers = peft_layers(factors, dtype)
            if base is not None and hasattr(type(base), "save_lora_weights"):
                writer = type(base)
            else:
                writer = StableDiffusionXLPipeline if two_encoders or "text_encoder_2" in layers else StableDiffusionPipeline
            kwargs = {f"{c}_lora_layers": layers[c] for c in layers}
            # diffusers' own packer ('unet.' / 'text_encoder.' prefixes); the file goes to the temporary path
            writer.save_lora_weights(str(tmp.parent), weight_name=tmp.name, safe_serialization=True,
                                     save_function=lambda weights, _name: save_file(weights, str(tmp), metadata=meta), **kwargs)
    return path


def lora_file_name(result) -> str:
    """'erase-<concepts>-<method>.safetensors': the kohya file's name, which A1111 and ComfyUI show."""
    concepts = "-".join(re.sub(r"[^A-Za-z0-9]+", "_", c).strip("_").lower() for c in result.concepts)[:60]
    return f"erase-{concepts or 'concepts'}-{re.sub(r'[^A-Za-z0-9]+', '_', result.method)}.safetensors"


def export_lora_folder(result, folder: str | Path, rank=DEFAULT_RANK, *, base=None, overwrite: bool = False,
                       scores: dict | None = None) -> dict:
    """A folder to share or push to the Hub: the kohya file (``lora_file_name``), the diffusers file
    (``pytorch_lora_weights.safetensors``, what ``load_lora_weights(folder)`` picks) and a model card
    (README.md), from one factorisation, written atomically. Returns what it wrote: rank, files,
    left-out tensors, relative errors."""
    from erase.cards import model_card, write_card
    from erase.export import _fingerprint, atomic_path

    factors = factorise(result, rank, base)
    errors = list(factors.errors.values())
    kohya = lora_file_name(result)
    info = {"rank": "full" if factors.rank is None else factors.rank, "max_rank": factors.max_rank(), "modules": len(errors),
            "relative_error_max": max(errors), "relative_error_mean": sum(errors) / len(errors), "left_out": factors.left_out,
            "files": {"kohya": kohya, "diffusers": LORA_WEIGHT_NAME}}
    with atomic_path(folder, overwrite) as tmp:
        tmp.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the left-out tensors are in the card and the returned info
            export_lora(result, tmp / kohya, rank, "kohya", base=base, factors=factors)
            export_lora(result, tmp / LORA_WEIGHT_NAME, rank, "diffusers", base=base, factors=factors)
        card = model_card(result, kind="lora", scores=scores or getattr(result, "scores", None),
                          fingerprint=_fingerprint(result, base), lora=info, family=base_family(result, base))
        write_card(tmp, card)
    info["folder"] = str(folder)
    return info
