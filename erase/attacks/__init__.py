"""Attacks that try to bring an erased concept back, and post-attack UA.

    from erase.attacks import run_attack
    res = run_attack(pipe, "square", "ti", erasure=result)      # result: ErasureResult, delta path or None
    res.ua, res.prompts, res.images

Three attacks (``available()``), each a config dataclass and a ``run`` function:

- ``ti``: textual inversion (Pham et al., ICLR 2024): learn new token embeddings from images of
  the concept against the erased model, then generate with them in place of the concept's word.
- ``prompt``: an UnlearnDiffAtk-style discrete prompt attack (Zhang et al., ECCV 2024): optimise
  k prefix tokens through their embeddings, projected back to the vocabulary, so that the
  erased model denoises the concept's images; generate with the found prompt.
- ``relapse``: fine-tune the erased UNet on unrelated prompts and images (the retain set) and
  see whether the concept comes back with its plain prompts.

The attacker knows the erased weights. Images of the concept come from the user or from the
*base* model (``pipe`` without the erasure); the attack itself runs against the erased model.
Nothing of the user's pipeline changes: learned vectors are injected through ``prompt_embeds``
(erase.inversion's embedding hook), the tokenizer is untouched, and the erasure's and the
relapse's weights are swapped out again afterwards, also on error.

On the bundled toy world the attacked generations are the UA prompts of
``erase.toyworld.metrics.erasure_scores`` (every combination naming the concept, the same
per-image seeds) and ``AttackResult.ua`` is the share the judge does not assign to the concept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from erase.errors import EraseError
from erase.methods import check_positive, check_seed, option

__all__ = [
    "AttackConfig", "AttackResult", "AttackSpec", "available", "get", "make_config", "run_attack",
    "concept_data", "retain_data", "erased_weights", "attack_prompts",
]


@dataclass
class AttackConfig:
    """Settings every attack shares: the concept images it learns from and the seed."""

    seed: int = option(0, "seed of data generation, noise, timesteps and initialisation")
    n_images: int = option(16, "images of the concept (or, for relapse, of the retain set) the base model generates")
    generation_steps: int = option(25, "sampling steps when generating those images")
    guidance_scale: float = option(7.5, "classifier-free guidance when generating those images")
    batch_size: int = option(4, "items per optimisation step")

    def validate(self) -> None:
        check_seed(self.seed)
        check_positive(self, "n_images", "generation_steps", "batch_size")
        check_positive(self, "guidance_scale", integer=False)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    config_cls: type
    run: Callable  # run(ctx: AttackContext, cfg) -> Attacked
    summary: str
    toyworld: Mapping[str, object]
    needs: str  # "concept" (images of the concept) or "retain" (unrelated images)


@dataclass
class Attacked:
    """What an attack's ``run`` hands back: how to condition the generations, or new weights."""

    prompts: list[str]  # the attacked prompts, as a person reads them
    prompt_embeds: torch.Tensor | None = None  # (N, L, D) for the N evaluation prompts (None: plain prompts)
    tensors: dict[str, torch.Tensor] | None = None  # tensors to use while generating (relapse), keyed as ErasureResult's
    learned: dict = field(default_factory=dict)  # vectors / token ids, for the record
    stats: dict = field(default_factory=dict)


@dataclass
class AttackResult:
    """An attack's outcome: attacked prompts, the learned embeddings or ids, images, post-attack UA."""

    attack: str
    concept: str
    prompts: list[str]  # one per generated image: the attacked prompt
    eval_prompts: list[str]  # the plain prompt each image stands for
    seeds: list[int]
    images: list  # PIL images
    ua: float | None  # toy world: share of attacked images the judge does not assign to the concept
    learned: dict
    config: dict
    stats: dict

    def summary(self) -> dict:
        """JSON-ready record (no images, tensors as lists)."""
        learned = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in self.learned.items()}
        return {"attack": self.attack, "concept": self.concept, "UA": self.ua, "prompts": sorted(set(self.prompts)),
                "learned": learned, "config": self.config, "stats": self.stats, "n_images": len(self.images)}


_REGISTRY: dict[str, AttackSpec] = {}


def register(name, config_cls, run, summary, *, toyworld=None, needs="concept") -> None:
    _REGISTRY[name] = AttackSpec(name, config_cls, run, summary, dict(toyworld or {}), needs)


def _load() -> None:
    from erase.attacks import prompt, relapse, ti  # noqa: F401  (each registers itself)


def available() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> AttackSpec:
    _load()
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise EraseError(f"unknown attack {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def make_config(name: str, overrides: Mapping[str, object] | object | None = None, *, toyworld: bool = False):
    """The attack's config: defaults, then the toy-world presets (if asked), then ``overrides``
    (a dict, or a config instance used as is)."""
    from erase.methods import build_config

    spec = get(name)
    if isinstance(overrides, spec.config_cls):
        overrides.validate()
        return overrides
    if overrides is not None and dataclasses.is_dataclass(overrides):
        raise EraseError(f"config of type {type(overrides).__name__} is not a {spec.name} attack config")
    return build_config(spec.config_cls, f"attack {spec.name}", spec.toyworld if toyworld else None, overrides)


# ---------------------------------------------------------------------------------------------
# the erased weights, the data, the prompts


class _Weights:
    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)

    def components(self) -> list[str]:
        from erase.api import split_name

        return sorted({split_name(k)[0] for k in self.tensors})

    def applied(self, pipe):
        from erase.api import tensors_applied

        return tensors_applied(pipe, self.tensors)


def erased_weights(erasure):
    """Something with ``.applied(pipe)`` and ``.components()`` from an ErasureResult, a delta
    file, a dict of tensors (keyed as ErasureResult.tensors), or None (the model as it is)."""
    from pathlib import Path

    from erase.api import ErasureResult

    if erasure is None:
        return None
    if isinstance(erasure, (ErasureResult, _Weights)):
        return erasure
    if isinstance(erasure, (str, Path)):
        from erase.export import load_delta

        return _Weights(load_delta(erasure)[0])
    if isinstance(erasure, Mapping):
        return _Weights(erasure)
    raise EraseError(f"erasure must be an ErasureResult, a delta file or a dict of UNet tensors, got {type(erasure).__name__}")


def check_attack_concept(pipe, concept: str) -> str:
    from erase.concepts import check_concept
    from erase.models import is_toyworld

    if not isinstance(concept, str) or not concept.strip():
        raise EraseError(f"the concept to attack must be non-empty text, got {concept!r}")
    concept = " ".join(concept.split())
    if is_toyworld(pipe):
        from erase.toyworld import concept_kind

        concept_kind(concept)
        concept = concept.lower()
    check_concept(pipe.tokenizer, concept)
    return concept


def attack_prompts(pipe, concept: str, seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """The plain prompts and per-image seeds the attacked generations stand for. Toy world: the
    UA prompts and seeds of ``erasure_scores`` (every combination naming the concept); other
    models: the concept's first four template prompts, once per seed."""
    from erase.models import is_toyworld

    if is_toyworld(pipe):
        from erase.toyworld.metrics import _ORDER, _jobs
        from erase.toyworld.concepts import combinations, concept_kind

        k = _ORDER[concept_kind(concept)]
        prompts, img_seeds, _ = _jobs([t for t in combinations() if t[k] == concept], seeds)
        return prompts, img_seeds
    from erase.concepts import CONCEPT_TEMPLATES, concept_prompts

    base = concept_prompts(concept, CONCEPT_TEMPLATES[:4])
    return [p for s in seeds for p in base], [int(s) * 1000 + i for s in seeds for i in range(len(base))]


@torch.no_grad()
def concept_data(pipe, concept: str, cfg: AttackConfig, *, images=None, progress=None) -> tuple[torch.Tensor, list[str]]:
    """(latents, prompts naming the concept): the user's images, or ``cfg.n_images`` generated by
    ``pipe`` as it is (call it outside the erasure: the base model's images)."""
    from erase.data import encode_images, generate_latents
    from erase.prompts import prompt_source_for

    prompts = prompt_source_for(pipe).concept_prompts(concept)
    if images is not None:
        lat = encode_images(pipe, list(images), seed=cfg.seed)
        return lat.cpu(), [prompts[i % len(prompts)] for i in range(len(lat))]
    lat, chosen = generate_latents(pipe, prompts, cfg.n_images, steps=cfg.generation_steps,
                                   guidance_scale=cfg.guidance_scale, seed=cfg.seed, progress=_phase(progress, f"images of '{concept}'"))
    return lat.cpu(), chosen


@torch.no_grad()
def retain_data(pipe, concept: str, cfg: AttackConfig, *, progress=None) -> tuple[torch.Tensor, list[str]]:
    """(latents, prompts) of unrelated prompts (the retain set), generated by ``pipe`` as it is."""
    from erase.data import generate_latents
    from erase.prompts import prompt_source_for

    prompts = prompt_source_for(pipe).retain_prompts([concept])
    if not prompts:
        raise EraseError(f"no retain prompts left for concept {concept!r}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    prompts = [prompts[i] for i in order]
    lat, chosen = generate_latents(pipe, prompts, cfg.n_images, steps=cfg.generation_steps, guidance_scale=cfg.guidance_scale,
                                   seed=cfg.seed + 7919, progress=_phase(progress, "retain images"))
    return lat.cpu(), chosen


def _prefixed(progress, prefix: str):
    if progress is None:
        return None
    return lambda done, total, info: progress(done, total, {**info, "phase": prefix + info.get("phase", "")})


def _phase(progress, phase: str):
    if progress is None:
        return None
    return lambda done, total, info: progress(done, total, {**info, "phase": phase})


@dataclass
class AttackContext:
    """What an attack's ``run`` works on: the (erased) pipeline, the concept, its data and the
    prompts whose generations are scored."""

    pipe: object
    concept: str
    latents: torch.Tensor
    prompts: list[str]  # one per latent: the prompt it was made from (names the concept)
    eval_prompts: list[str]
    progress: object = None
    erased_components: tuple[str, ...] = ("unet",)  # what the erasure under attack changed

    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device

    def scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def report(self, done: int, total: int, info: dict) -> None:
        if self.progress is not None:
            self.progress(done, total, info)


@torch.no_grad()
def _generate(pipe, prompts: Sequence[str], seeds: Sequence[int], prompt_embeds: torch.Tensor | None, *,
              steps: int, guidance: float, batch: int = 36, progress=None) -> list:
    from erase.conditioning import pipeline_inputs
    from erase.models import sampling_autocast

    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        if prompt_embeds is None:
            kw = {"prompt": list(prompts[i : i + batch])}
        else:
            kw = pipeline_inputs(pipe, prompt_embeds[i : i + batch])
        with sampling_autocast(pipe):
            images += pipe(num_inference_steps=steps, guidance_scale=guidance, generator=gens, **kw).images
        if progress is not None:
            progress(min(i + batch, len(prompts)), len(prompts), {"phase": "attacked generations"})
    return images


def judge_ua(images, concept: str, judge=None) -> float:
    """Share of images the toy-world judge does not assign to ``concept``."""
    from erase.toyworld import KINDS, concept_kind
    from erase.toyworld.judge import load_judge

    kind = concept_kind(concept)
    judge = judge or load_judge()
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    pred = judge.logits(arr)[kind].argmax(1).numpy()
    return float((pred != KINDS[kind].index(concept)).mean())


def check_restarts(restarts, toyworld: bool | None = None) -> None:
    """EraseError unless ``restarts`` is a positive integer, and 1 off the toy world (choosing the
    attacker's best run needs its judge; ``toyworld`` None: the model is not known yet)."""
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise EraseError(f"restarts must be a positive integer, got {restarts!r}")
    if restarts > 1 and toyworld is False:
        raise EraseError("restarts > 1 keeps the attacker's best run, which needs the toy world's judge to tell; on "
                         "another model run the attack with several seeds (its config's seed, e.g. ti.seed=1) and look "
                         "at each run's images")


def run_attack(pipe, concept: str, attack: str = "ti", config=None, *, erasure=None, images=None, data=None,
               seeds: Sequence[int] = (0,), progress=None, judge=None, sampling: Mapping | None = None,
               restarts: int = 1, erased_components: Sequence[str] | None = None) -> AttackResult:
    """Attack ``pipe`` (with ``erasure`` applied, if given) to bring ``concept`` back.

    ``config``: the attack's config, a dict of overrides, or None (defaults; toy-world presets on
    the bundled model). ``images``: the user's images of the concept (else the base model's,
    ``pipe`` without the erasure). ``data``: precomputed (latents, prompts) to share between
    attacks. ``seeds``: scoring seeds (toy world: as erasure_scores). Returns an AttackResult;
    ``ua`` is set on the toy world. ``pipe`` is left exactly as it was.

    ``restarts``: run the attack that many times from the same data with the attack seeds
    ``seed``, ``seed + 1``, ... and return the attacker's best run, the one with the lowest
    post-attack UA (an attacker restarts until the concept comes back; one run's outcome varies a
    lot with its seed). Every run's UA is in ``stats["restarts"]``. Toy world only: choosing
    the best run needs the judge.

    ``erased_components``: what the erasure changed, where ``pipe`` is an erased model rather than
    the base model with ``erasure`` (default: ``erasure``'s components, else the UNet); the
    relapse attack fine-tunes them.
    """
    from erase.models import is_toyworld

    check_restarts(restarts, is_toyworld(pipe))
    if restarts == 1:
        return _attack_once(pipe, concept, attack, config, erasure=erasure, images=images, data=data, seeds=seeds,
                            progress=progress, judge=judge, sampling=sampling, erased_components=erased_components)
    spec = get(attack)
    cfg = make_config(spec.name, config, toyworld=True)
    if data is None:  # every restart attacks from the same images
        concept = check_attack_concept(pipe, concept)
        data = (retain_data(pipe, concept, cfg, progress=progress) if spec.needs == "retain"
                else concept_data(pipe, concept, cfg, images=images, progress=progress))
    runs = []
    for k in range(restarts):
        run_cfg = dataclasses.replace(cfg, seed=cfg.seed + k)
        runs.append(_attack_once(pipe, concept, attack, run_cfg, erasure=erasure, images=images, data=data, seeds=seeds,
                                 progress=_prefixed(progress, f"restart {k + 1}/{restarts}: "), judge=judge,
                                 sampling=sampling, erased_components=erased_components))
    best = min(runs, key=lambda r: r.ua)
    best.stats["restarts"] = {"seeds": [cfg.seed + k for k in range(restarts)], "UA": [r.ua for r in runs]}
    return best


def _attack_once(pipe, concept: str, attack: str, config, *, erasure, images, data, seeds: Sequence[int], progress,
                 judge, sampling: Mapping | None, erased_components: Sequence[str] | None = None) -> AttackResult:
    """One run of ``run_attack`` (see there)."""
    from erase.evaluation import sampling_defaults
    from erase.models import is_toyworld

    spec = get(attack)
    concept = check_attack_concept(pipe, concept)
    cfg = make_config(spec.name, config, toyworld=is_toyworld(pipe))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise EraseError("at least one scoring seed is needed")
    weights = erased_weights(erasure)
    start = time.perf_counter()
    if data is None:
        if spec.needs == "retain":
            data = retain_data(pipe, concept, cfg, progress=progress)
        else:
            data = concept_data(pipe, concept, cfg, images=images, progress=progress)
    latents, prompts = data
    eval_prompts, img_seeds = attack_prompts(pipe, concept, seeds)
    samp = {**sampling_defaults(pipe), **(sampling or {})}
    ctx = AttackContext(pipe=pipe, concept=concept, latents=latents, prompts=list(prompts), eval_prompts=eval_prompts,
                        progress=progress, erased_components=tuple(weights.components()) if weights is not None
                        else tuple(erased_components or ("unet",)))
    torch.manual_seed(cfg.seed)
    with weights.applied(pipe) if weights is not None else nullcontext():
        t0 = time.perf_counter()
        out = spec.run(ctx, cfg)
        attack_seconds = time.perf_counter() - t0
        extra = erased_weights(out.tensors) if out.tensors else None
        with extra.applied(pipe) if extra is not None else nullcontext():
            imgs = _generate(pipe, eval_prompts, img_seeds, out.prompt_embeds, steps=samp["steps"],
                             guidance=samp["guidance_scale"], progress=progress)
    ua = judge_ua(imgs, concept, judge) if is_toyworld(pipe) else None
    stats = {**out.stats, "attack_seconds": round(attack_seconds, 2), "seconds": round(time.perf_counter() - start, 2),
             "n_train_images": int(latents.shape[0])}
    return AttackResult(attack=spec.name, concept=concept, prompts=out.prompts, eval_prompts=eval_prompts, seeds=img_seeds,
                        images=imgs, ua=ua, learned=out.learned, config=dataclasses.asdict(cfg), stats=stats)
