"""The engine's entry point: erase concepts from a pipeline, get the change back as a result.

    pipe = load_pipeline()
    result = erase_concepts(pipe, ["circle"], method="uce")
    with result.applied(base_pipe): ...        # swap the erased weights in, and out again
    export_delta(result, "circle.safetensors")

``erase_concepts`` changes ``pipe.unet`` in place (``inplace=False`` puts the original weights
back and leaves the change only in the result). On any failure, cancellation included, the UNet
is restored: a pipeline is never left half-erased.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from erase import methods
from erase.errors import EraseError
from erase.models import is_toyworld, resolve_mixed_precision
from erase.prompts import prompt_source_for
from erase.training import ProgressFn, select_parameters

__all__ = ["ErasureResult", "erase_concepts", "normalise_concepts", "config_for", "load_unet_tensors", "tensors_applied"]


def load_unet_tensors(pipe, values: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors (keyed like ``unet.named_parameters()``) into ``pipe.unet``, checking names and shapes."""
    params = dict(pipe.unet.named_parameters())
    missing = [n for n in values if n not in params]
    if missing:
        raise EraseError(f"this UNet has no tensor {missing[0]!r}: the delta was made for another model")
    with torch.no_grad():
        for n, v in values.items():
            if params[n].shape != v.shape:
                raise EraseError(f"tensor {n!r} has shape {tuple(v.shape)}, the UNet's is {tuple(params[n].shape)}")
            params[n].copy_(v.to(params[n].device, params[n].dtype))


@contextmanager
def tensors_applied(pipe, tensors: Mapping[str, torch.Tensor]):
    """Use ``pipe`` with ``tensors`` (keyed like ``unet.named_parameters()``) written into its UNet
    inside the block; the values they replaced come back afterwards, also on error."""
    params = dict(pipe.unet.named_parameters())
    saved = {n: params[n].detach().clone() for n in tensors if n in params}
    load_unet_tensors(pipe, tensors)
    try:
        yield pipe
    finally:
        load_unet_tensors(pipe, saved)


@dataclass
class ErasureResult:
    """The change an erasure made: the new values of every UNet tensor it changed, plus metadata."""

    method: str
    concepts: list[str]
    base_model: str
    config: dict
    tensors: dict[str, torch.Tensor]  # erased values (CPU, fp32), keyed like unet.state_dict()
    original: dict[str, torch.Tensor]  # the base model's values of the same tensors
    stats: dict = field(default_factory=dict)
    mask: dict[str, torch.Tensor] | None = None

    def metadata(self) -> dict[str, str]:
        import json

        from erase import __version__

        return {
            "format": "erase-delta",
            "erase_version": __version__,
            "method": self.method,
            "concepts": json.dumps(self.concepts),
            "base_model": self.base_model,
            "config": json.dumps(self.config, default=str),
            "stats": json.dumps({k: v for k, v in self.stats.items() if k != "mask"}, default=str),
        }

    def apply(self, pipe) -> None:
        """Write the erased values into ``pipe.unet``."""
        load_unet_tensors(pipe, self.tensors)

    def restore(self, pipe) -> None:
        """Write the base model's values back into ``pipe.unet``."""
        load_unet_tensors(pipe, self.original)

    def applied(self, pipe):
        """Use ``pipe`` as the erased model inside the block; the base weights come back after."""
        return tensors_applied(pipe, self.tensors)


def normalise_concepts(concepts: str | Sequence[str]) -> list[str]:
    items = [concepts] if isinstance(concepts, str) else list(concepts or [])
    out: list[str] = []
    for c in items:
        if not isinstance(c, str) or not c.strip():
            raise EraseError(f"a concept must be non-empty text, got {c!r}")
        c = " ".join(c.split())
        if c.lower() not in (x.lower() for x in out):
            out.append(c)
    if not out:
        raise EraseError("no concept given to erase")
    return out


def config_for(pipe, method: str, config=None):
    """Resolve a config: a dataclass instance, a dict or YAML path of overrides, or None (defaults).

    On the bundled toy-world model the method's measured toy-world presets come first.
    """
    spec = methods.get(method)
    if isinstance(config, spec.config_cls):
        config.validate()
        return config
    if config is not None and dataclasses.is_dataclass(config):
        raise EraseError(f"config of type {type(config).__name__} is not a {spec.name} config")
    return methods.load_config(spec.name, config, toyworld=is_toyworld(pipe))


def erase_concepts(
    pipe,
    concepts: str | Sequence[str],
    method: str = methods.RECOMMENDED,
    config=None,
    *,
    progress: ProgressFn | None = None,
    images: Mapping[str, Sequence] | None = None,
    inplace: bool = True,
) -> ErasureResult:
    """Erase ``concepts`` from ``pipe`` with ``method`` ('fmn' or 'salun').

    ``config``: the method's config dataclass, a dict of overrides, a YAML file, or None.
    ``images``: optional user images per concept; without them the data comes from the model.
    ``progress(done, total, info)`` is called through data generation and training; raise
    ``erase.training.Cancelled`` from it to stop (the UNet is then restored).
    """
    from accelerate.utils import set_seed

    from erase.methods.job import ErasureJob

    spec = methods.get(method)
    concepts = normalise_concepts(concepts)
    cfg = config_for(pipe, spec.name, config)
    device = next(pipe.unet.parameters()).device
    # 'auto': the pipeline's own (fp32 on CPU); an explicit half precision on CPU runs, slowly.
    mp = resolve_mixed_precision(cfg.mixed_precision, device, getattr(pipe, "erase_mixed_precision", None))
    if pipe.unet.dtype != torch.float32:
        raise EraseError(f"the UNet must hold fp32 master weights for training, it is {pipe.unet.dtype}; load it with load_pipeline()")

    job = ErasureJob(pipe=pipe, concepts=concepts, prompts=prompt_source_for(pipe, cfg.templates),
                     mixed_precision=mp, progress=progress, images=images)
    job.concept_items()  # every concept must be placeable in its prompts before any work starts
    trainable = select_parameters(pipe.unet, cfg.parameter_scope())
    snapshot = {n: p.detach().to("cpu", copy=True) for n, p in trainable.items()}
    set_seed(cfg.seed)
    start = time.perf_counter()
    try:
        stats = spec.run(job, cfg)
    except BaseException as e:
        load_unet_tensors(pipe, snapshot)
        if isinstance(e, torch.cuda.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))
        ):
            raise EraseError(
                "out of memory: try scope 'cross_attn_kv', gradient_checkpointing: true or a smaller batch_size"
            ) from None
        raise
    finally:
        pipe.unet.eval()
    seconds = time.perf_counter() - start

    params = dict(pipe.unet.named_parameters())
    changed = {n: params[n].detach().to("cpu", torch.float32, copy=True) for n in snapshot if not torch.equal(params[n].detach().cpu(), snapshot[n])}
    mask = stats.pop("mask", None)
    stats.update(seconds=seconds, changed_tensors=len(changed), changed_parameters=sum(t.numel() for t in changed.values()))
    info = getattr(pipe, "erase_info", None)
    result = ErasureResult(
        method=spec.name, concepts=concepts, base_model=info.source if info else "unknown",
        config=dataclasses.asdict(cfg), tensors=changed, original={n: snapshot[n] for n in changed},
        stats=stats, mask=mask,
    )
    if not inplace:
        result.restore(pipe)
    return result
