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
from erase.conditioning import text_encoder_names
from erase.training import ProgressFn, scope_component, select_tensors

__all__ = [
    "ErasureResult", "erase_concepts", "normalise_concepts", "config_for", "load_tensors", "load_unet_tensors",
    "tensors_applied", "current_tensors", "split_name", "qualified_name", "COMPONENTS",
]


COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # the trainable parts of a pipeline a change may touch (SDXL has two text encoders)


def split_name(key: str) -> tuple[str, str]:
    """('unet' | 'text_encoder' | 'text_encoder_2', parameter name) of a tensor key. Keys name their
    component with a prefix ('text_encoder.text_model…', 'unet.down_blocks…'); a key without one is a UNet
    parameter (how deltas, ESD's and UCE's own scripts name UNet tensors)."""
    for component in COMPONENTS:
        if key.startswith(component + "."):
            return component, key[len(component) + 1 :]
    return "unet", key


def qualified_name(component: str, name: str) -> str:
    """The key of parameter ``name`` of ``component`` in an ErasureResult (UNet names stay bare)."""
    return name if component == "unet" else f"{component}.{name}"


def _parameters(pipe, component: str) -> dict[str, torch.nn.Parameter]:
    module = getattr(pipe, component, None)
    if module is None:
        raise EraseError(f"this pipeline has no {component}: the tensors were made for another model")
    return dict(module.named_parameters())


def load_tensors(pipe, values: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors into ``pipe``'s UNet and text encoder, checking every name and shape first.

    Keys as ``split_name`` reads them: bare or 'unet.'-prefixed UNet names, 'text_encoder.'-prefixed
    text-encoder names. Nothing is written unless every tensor fits."""
    params = {c: None for c in COMPONENTS}
    targets = []
    for key, value in values.items():
        component, name = split_name(key)
        if params[component] is None:
            params[component] = _parameters(pipe, component)
        target = params[component].get(name)
        if target is None:
            raise EraseError(f"this model's {component} has no tensor {name!r}: the delta was made for another model")
        if target.shape != value.shape:
            raise EraseError(f"{component} tensor {name!r} has shape {tuple(value.shape)}, the model's is {tuple(target.shape)}")
        targets.append((target, value))
    with torch.no_grad():
        for target, value in targets:
            target.copy_(value.to(target.device, target.dtype))


load_unet_tensors = load_tensors  # the name before text-encoder tensors existed


def current_tensors(pipe, keys) -> dict[str, torch.Tensor]:
    """CPU copies of ``pipe``'s present values of the tensors named by ``keys``."""
    out = {}
    for key in keys:
        component, name = split_name(key)
        param = _parameters(pipe, component).get(name)
        if param is not None:
            out[key] = param.detach().to("cpu", copy=True)
    return out


@contextmanager
def tensors_applied(pipe, tensors: Mapping[str, torch.Tensor]):
    """Use ``pipe`` with ``tensors`` (keys as ``load_tensors`` reads them) written into it inside
    the block; the values they replaced come back afterwards, also on error."""
    saved = current_tensors(pipe, tensors)
    load_tensors(pipe, tensors)
    try:
        yield pipe
    finally:
        load_tensors(pipe, saved)


@dataclass
class ErasureResult:
    """The change an erasure made: the new values of every tensor it changed, plus metadata.

    ``tensors`` and ``original`` are keyed like ``unet.named_parameters()``; a text-encoder
    tensor's key carries the prefix 'text_encoder.' (see ``split_name``)."""

    method: str
    concepts: list[str]
    base_model: str
    config: dict
    tensors: dict[str, torch.Tensor]  # erased values (CPU, fp32)
    original: dict[str, torch.Tensor]  # the base model's values of the same tensors
    stats: dict = field(default_factory=dict)
    mask: dict[str, torch.Tensor] | None = None
    base_fingerprint: dict | str | None = None  # the base UNet's (erase.fingerprint), recorded by exports and checked on load

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
        """Write the erased values into ``pipe``."""
        load_tensors(pipe, self.tensors)

    def restore(self, pipe) -> None:
        """Write the base model's values back into ``pipe``."""
        load_tensors(pipe, self.original)

    def components(self) -> list[str]:
        """The pipeline components this erasure changed ('unet', 'text_encoder')."""
        return sorted({split_name(k)[0] for k in self.tensors})

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
    """Erase ``concepts`` from ``pipe`` with ``method`` (a name of erase.methods.available(); default: the recommended one).

    ``config``: the method's config dataclass, a dict of overrides, a YAML file, or None.
    ``images``: optional user images per concept; without them the data comes from the model.
    ``progress(done, total, info)`` is called through data generation and training; raise
    ``erase.training.Cancelled`` from it to stop (the UNet is then restored).

    Under ``accelerate launch`` with N > 1 processes (once accelerate's ``PartialState()`` has
    joined them), call it in every process: the fine-tuning methods then split each batch across
    the processes and every process returns the same result (erase.distributed).
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
    for setting, n in cfg.split_items().items():  # data-parallel: every process needs a share of each batch
        job.shard.require(n, setting)
    scope = cfg.parameter_scope()
    # text encoders kept in half precision (a GPU's frozen parts) train in fp32 and go back after
    encoders = [getattr(pipe, n) for n in text_encoder_names(pipe)]
    half_encoder = encoders[0].dtype if scope_component(scope) == "text_encoder" and encoders[0].dtype != torch.float32 else None

    def encoders_to(dtype):
        for te in encoders:
            te.to(dtype)

    if half_encoder is not None:
        encoders_to(torch.float32)
    trainable = select_tensors(pipe, scope)
    snapshot = {n: p.detach().to("cpu", copy=True) for n, p in trainable.items()}  # fp32, so changes compare exactly
    set_seed(cfg.seed)
    start = time.perf_counter()
    try:
        stats = spec.run(job, cfg)
    except BaseException as e:
        load_tensors(pipe, snapshot)
        if half_encoder is not None:
            encoders_to(half_encoder)
        if isinstance(e, torch.cuda.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))
        ):
            raise EraseError(
                "out of memory: try scope 'cross_attn_kv', gradient_checkpointing: true or a smaller batch_size"
            ) from None
        raise
    finally:
        pipe.unet.eval()
        for te in encoders:
            te.eval()
    seconds = time.perf_counter() - start

    changed = {n: trainable[n].detach().to("cpu", torch.float32, copy=True) for n in snapshot
               if not torch.equal(trainable[n].detach().cpu(), snapshot[n])}
    if half_encoder is not None:
        encoders_to(half_encoder)
    mask = stats.pop("mask", None)
    stats.update(seconds=seconds, changed_tensors=len(changed), changed_parameters=sum(t.numel() for t in changed.values()))
    if job.shard.active:
        stats["data_parallel_processes"] = job.shard.world
    info = getattr(pipe, "erase_info", None)
    result = ErasureResult(
        method=spec.name, concepts=concepts, base_model=info.source if info else "unknown",
        config=dataclasses.asdict(cfg), tensors=changed, original={n: snapshot[n] for n in changed},
        stats=stats, mask=mask,
    )
    from erase.fingerprint import base_fingerprint

    result.base_fingerprint = base_fingerprint(pipe, exclude=changed)  # over tensors the erasure left as they were
    if not inplace:
        result.restore(pipe)
    return result
