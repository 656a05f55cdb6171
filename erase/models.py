"""Load a Stable Diffusion pipeline from a Hub id, a local diffusers folder or a single file.

    pipe = load_pipeline()                                   # the bundled toy-world model
    pipe = load_pipeline("runwayml/stable-diffusion-v1-5")   # Hub id (cache or network)
    pipe = load_pipeline("path/to/diffusers-folder")
    pipe = load_pipeline("model.safetensors", config="path/to/diffusers-folder")  # offline single file

Weights are kept in fp32 (they are the master weights of any fine-tuning); the frozen parts
(VAE, text encoder) are cast to the half precision of the accelerator when one is present.
Device and mixed precision come from accelerate: GPU with bf16 (fp16 where bf16 is missing),
CPU with fp32. On CPU an explicit 'bf16' (or 'fp16' where autocast really runs it there) is
allowed, slowly, so that tests can exercise the GPU's dtype path; ``resolve_mixed_precision``
holds the policy. Only safetensors files are read; pickled checkpoints are refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from erase.errors import EraseError

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
SUPPORTED_TEXT = "Stable Diffusion 1.x/2.x (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline)"
# Pipelines whose denoiser is a transformer (MMDiT/DiT): no UNet cross-attention for the methods to edit.
_TRANSFORMER_PIPELINES = ("StableDiffusion3", "Flux", "PixArt", "Sana", "HunyuanDiT", "AuraFlow", "Lumina", "CogView", "Qwen")
_PIPELINE_FOLDERS = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
TOYWORLD_MARKER = "toyworld.json"  # written beside model_index.json by the toy world's export
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

__all__ = [
    "load_pipeline", "place_pipeline", "default_device", "default_mixed_precision", "resolve_mixed_precision",
    "autocast_runs_in", "model_family", "is_toyworld", "ModelInfo",
]

PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class ModelInfo:
    """Where a pipeline came from; stored in exports' metadata."""

    source: str  # what the user passed (or "bundled:toyworld")
    kind: str  # "bundled" | "hub" | "folder" | "single-file"
    family: str  # "sd1" | "sd2" | "sdxl" | "toyworld" | "custom"

    @property
    def toyworld(self) -> bool:
        """A model of the bundled concept world (the bundled one, or a folder exported from it)."""
        return self.family == "toyworld"


def default_device() -> torch.device:
    from accelerate import PartialState

    return PartialState().device


def default_mixed_precision(device: torch.device | str | None = None) -> str:
    """'bf16' on a GPU that has it, 'fp16' on an older GPU, 'no' (fp32) on CPU."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def half_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


_AUTOCAST_PROBES: dict[tuple[str, str], bool] = {}
_SLOW_WARNED: set[tuple[str, str]] = set()


def autocast_runs_in(mixed_precision: str, device: torch.device | str) -> bool:
    """Whether the training loop's autocast (accelerate's) really computes in this half precision
    on ``device``: a small matrix product under it must come out in that dtype. (accelerate 1.x
    leaves fp16 on CPU in fp32 without a word, although torch's CPU autocast has fp16.)"""
    device = torch.device(device)
    key = (mixed_precision, device.type)
    if key not in _AUTOCAST_PROBES:
        from erase.training import make_accelerator

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with make_accelerator(mixed_precision, device).autocast():
                    x = torch.ones(2, 2, device=device)
                    ok = torch.nn.functional.linear(x, x).dtype == half_dtype(mixed_precision)
        except (ValueError, RuntimeError):
            ok = False
        _AUTOCAST_PROBES[key] = ok
    return _AUTOCAST_PROBES[key]


def resolve_mixed_precision(requested: str | None, device: torch.device | str, loaded: str | None = None) -> str:
    """The precision a run uses: 'no', 'fp16' or 'bf16'.

    'auto' (or None) is ``loaded`` (the pipeline's own, from load_pipeline) if given, else the
    device's default: bf16/fp16 on a GPU, fp32 ('no') on CPU. On a GPU any explicit choice goes.
    Elsewhere an explicit half precision is allowed where autocast really runs it (bf16 on CPU;
    fp16 only if accelerate autocasts it there), with a one-time warning that it is slow; it is
    meant for tests of the GPU's dtype path. An impossible request is an EraseError.
    """
    device = torch.device(device)
    mp = requested or "auto"
    if mp == "auto":
        mp = loaded or default_mixed_precision(device)
    if mp not in PRECISIONS:
        raise EraseError(f"mixed_precision must be 'auto', 'no', 'fp16' or 'bf16', got {mp!r}")
    if mp == "no" or device.type == "cuda":
        return mp
    if not autocast_runs_in(mp, device):
        other = "'bf16' or 'no'" if mp != "bf16" and autocast_runs_in("bf16", device) else "'no'"
        raise EraseError(
            f"mixed_precision {mp!r} is not possible on {device.type}: the training loop's autocast (accelerate) does not "
            f"compute in {str(half_dtype(mp)).replace('torch.', '')} there (training would silently stay fp32); use {other}, or a GPU"
        )
    if (mp, device.type) not in _SLOW_WARNED:
        _SLOW_WARNED.add((mp, device.type))
        warnings.warn(
            f"mixed_precision {mp!r} on {device.type} is slow (emulated half precision); it is meant for testing "
            "the GPU's dtype path. 'auto' keeps fp32 here.", RuntimeWarning, stacklevel=3,
        )
    return mp


def place_pipeline(pipe, device: torch.device | str, mixed_precision: str):
    """Put ``pipe`` on ``device`` as erase uses it: the UNet in fp32 (master weights), the frozen
    VAE and text encoder in ``mixed_precision``'s half dtype; sets ``pipe.erase_mixed_precision``."""
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    frozen_dtype = half_dtype(mixed_precision)
    if frozen_dtype != torch.float32:
        from erase.conditioning import text_encoder_names

        pipe.vae.to(dtype=frozen_dtype)
        for name in text_encoder_names(pipe):
            getattr(pipe, name).to(dtype=frozen_dtype)
    pipe.erase_mixed_precision = mixed_precision
    return pipe


def sampling_autocast(pipe):
    """Context for running ``pipe(...)``: autocast to the text encoder's dtype when it differs from
    the UNet's (frozen parts in bf16/fp16 on a GPU, the UNet's fp32 master weights), else nothing."""
    from contextlib import nullcontext

    half = (pipe.text_encoder or pipe.text_encoder_2).dtype
    if half == pipe.unet.dtype:
        return nullcontext()
    return torch.autocast(pipe.unet.device.type, dtype=half)


def model_family(pipe, location: str | None = None) -> str:
    """'toyworld' (a folder with toyworld.json), 'sdxl', 'sd1' (768-d context), 'sd2' (1024-d) or 'custom'."""
    from erase.conditioning import is_sdxl

    if location is not None and (Path(location) / TOYWORLD_MARKER).is_file():
        return "toyworld"
    if is_sdxl(pipe):
        return "sdxl"
    dim = pipe.unet.config.cross_attention_dim
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim
    return {768: "sd1", 1024: "sd2"}.get(int(dim), "custom")


def is_toyworld(pipe) -> bool:
    """True for pipelines of the bundled concept world: they get its prompts, presets and judge."""
    info = getattr(pipe, "erase_info", None)
    return bool(info is not None and info.toyworld)


def check_pipeline_class(cls: str, where: str) -> str:
    """``cls`` if erase supports it, else a one-line EraseError naming what is supported."""
    if cls in SUPPORTED_PIPELINES:
        return cls
    if cls.startswith(_TRANSFORMER_PIPELINES):
        raise EraseError(
            f"unsupported pipeline {cls!r} in {where}: its denoiser is a transformer (MMDiT/DiT) with no UNet "
            f"cross-attention for the methods to edit; erase supports {SUPPORTED_TEXT}"
        )
    raise EraseError(f"unsupported pipeline {cls!r} in {where}: erase supports {SUPPORTED_TEXT}")


def _check_folder(path: Path) -> str:
    """The folder's pipeline class, after checking it is one erase supports with all its parts."""
    index = path / "model_index.json"
    if not index.is_file():
        raise EraseError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    try:
        cls = json.loads(index.read_text()).get("_class_name", "")
    except json.JSONDecodeError as e:
        raise EraseError(f"{index} is not valid JSON: {e}") from None
    check_pipeline_class(cls, str(path))
    for sub in _PIPELINE_FOLDERS[cls]:
        if not (path / sub).is_dir():
            raise EraseError(f"pipeline folder {path} has no {sub}/ subfolder")
    return cls


def _check_single_file(path: Path) -> str:
    """The pipeline class a single-file checkpoint holds (by its tensor names), if erase supports it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise EraseError(f"{path} is not a readable safetensors file: {e}") from None
    if any(".joint_blocks." in k or k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        raise EraseError(
            f"{path} is an SD 3 / FLUX checkpoint (an MMDiT transformer, no UNet cross-attention); erase supports {SUPPORTED_TEXT}"
        )
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise EraseError(f"{path} does not look like a Stable Diffusion checkpoint (no model.diffusion_model.* keys)")
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "StableDiffusionXLPipeline"
    return "StableDiffusionPipeline"


def _hub_class(repo: str, local_files_only: bool) -> str:
    """The pipeline class a Hub repo's model_index.json names (read before any weights come down)."""
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(repo, "model_index.json", local_files_only=local_files_only)
    return json.loads(Path(index).read_text()).get("_class_name", "")


def _resolve(model: str | os.PathLike | None) -> tuple[str, str]:
    """Return (kind, location) for what the user passed."""
    if model is None or str(model) in ("", "toyworld", "bundled"):
        from erase.toyworld import default_model_path

        return "bundled", str(default_model_path())
    text = str(model)
    path = Path(text).expanduser()
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise EraseError(
            f"refusing to load {path}: pickled checkpoints ({path.suffix}) can run arbitrary code; "
            "convert it to .safetensors first"
        )
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise EraseError(f"model file not found: {path}")
        return "single-file", str(path)
    if path.exists():
        if not path.is_dir():
            raise EraseError(f"model path {path} is neither a diffusers folder nor a .safetensors file")
        return "folder", str(path)
    if not _HUB_ID.match(text):
        raise EraseError(f"model path not found: {text}")
    return "hub", text


@contextmanager
def _quiet_libraries():
    """Silence diffusers'/transformers' loading bars and warnings while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error(), tlog.set_verbosity_error()
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(saved[0]), tlog.set_verbosity(saved[1])
        dlog.enable_progress_bar(), tlog.enable_progress_bar()


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _arguments(cls: str, common: dict) -> dict:
    """Loading arguments for ``cls``: the safety checker off for SD 1.x/2.x (SDXL has none)."""
    if cls == "StableDiffusionPipeline":
        return common
    return {k: v for k, v in common.items() if k not in ("safety_checker", "requires_safety_checker")}


def _load(kind: str, location: str, config, local_files_only: bool, common: dict):
    try:
        if kind in ("bundled", "folder"):
            cls = _check_folder(Path(location))
            return _pipeline_class(cls).from_pretrained(location, use_safetensors=True, local_files_only=True, **_arguments(cls, common))
        if kind == "single-file":
            cls = _check_single_file(Path(location))
            kwargs = dict(_arguments(cls, common), local_files_only=local_files_only)
            if config is not None:
                if Path(config).exists():
                    folder_cls = _check_folder(Path(config))
                    if folder_cls != cls:
                        raise EraseError(f"{location} is a {cls} checkpoint but its config {config} is a {folder_cls} folder")
                    kwargs["local_files_only"] = True
                kwargs["config"] = str(config)
            elif cls == "StableDiffusionXLPipeline" and local_files_only:
                raise EraseError(
                    f"{location} is an SDXL single file: offline, pass config=<a local SDXL diffusers folder> "
                    "(--config on the command line) so that its components can be built"
                )
            pipe = _pipeline_class(cls).from_single_file(location, **kwargs)
            for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
                module = getattr(pipe, name, None)
                if module is not None and any(p.is_meta for p in module.parameters()):
                    raise EraseError(f"{location}: diffusers could not read the {name} weights from this single file "
                                     "(they stay unloaded); is the config the model it was made from?")
            return pipe
        cls = check_pipeline_class(_hub_class(location, local_files_only), location)
        return _pipeline_class(cls).from_pretrained(location, use_safetensors=True, local_files_only=local_files_only,
                                                    **_arguments(cls, common))
    except EraseError:
        raise
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if kind == "hub":
            hint = " (no such local path; as a Hub id: is it right, and is it cached or the network reachable?)"
        elif kind == "single-file" and config is None:
            hint = " (offline? pass config=<a local diffusers folder of the same architecture>)"
        raise EraseError(f"could not load model {location!r}{hint}: {first}") from None


def load_pipeline(
    model: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    mixed_precision: str | None = None,
    local_files_only: bool | None = None,
):
    """Load a Stable Diffusion 1.x/2.x or SDXL pipeline, ready for erasure.

    ``model``: None (the bundled toy-world model), a Hub id, a local diffusers folder or a
    ``.safetensors`` single-file checkpoint. ``config``: for single files, a local diffusers folder
    (or Hub id) whose component configs describe the checkpoint; needed offline.
    Returns a ``StableDiffusionPipeline`` (or ``StableDiffusionXLPipeline``) on ``device`` with ``pipe.erase_info`` (a ModelInfo)
    and ``pipe.erase_mixed_precision`` set. Raises EraseError on bad input.
    """
    kind, location = _resolve(model)
    device = torch.device(device) if device is not None else default_device()
    mixed_precision = resolve_mixed_precision(mixed_precision, device)  # checks the value too
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    common = dict(safety_checker=None, requires_safety_checker=False, dtype=torch.float32)

    with _quiet_libraries():
        pipe = _load(kind, location, config, local_files_only, common)
    if type(pipe).__name__ not in SUPPORTED_PIPELINES:
        raise EraseError(f"unsupported pipeline {type(pipe).__name__}; erase supports {SUPPORTED_TEXT}")
    place_pipeline(pipe, device, mixed_precision)
    pipe.erase_info = ModelInfo(source=str(model) if model is not None else "bundled:toyworld", kind=kind, family=model_family(pipe, location))
    logging.getLogger(__name__).info("loaded %s (%s) on %s, mixed precision %s", location, kind, device, mixed_precision)
    return pipe
