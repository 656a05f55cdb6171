"""Registry of diffusion erasure methods: one module per method, one ``register`` call each.

A method is a config dataclass (defaults from its paper, ``help`` in each field's metadata)
and a function ``run(job: ErasureJob, config) -> dict`` that changes ``job.unet`` in place and
returns its statistics. ``get(name)`` finds it; ``load_config(name, source)`` builds its config
from a YAML file or a dict, refusing unknown keys and impossible values.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from erase.errors import EraseError


def option(default, help: str, **kw):
    """A dataclass field with help text (shown by the CLI and the app)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class BaseConfig:
    """Settings every method shares, closed-form or fine-tuning (as peft's PeftConfig)."""

    seed: int = option(0, "seed for data generation, noise and timesteps")
    mixed_precision: str = option("auto", "auto (bf16/fp16 on GPU, fp32 on CPU) | no | fp16 | bf16")
    templates: list[str] | None = option(None, "concept prompt templates with '{}' (null: the model's defaults)")

    def parameter_scope(self) -> str:
        """Which tensors the method may change (a scope of erase.training.select_parameters)."""
        return self.scope

    def allowed_scopes(self) -> tuple[str, ...]:
        """The scopes this method can train (the UNet's; a method that edits the text encoder adds it)."""
        from erase.training import UNET_SCOPES

        return UNET_SCOPES

    def split_items(self) -> dict[str, int]:
        """Items per step that data-parallel training shares out among the processes, by setting
        (erase.distributed; each process needs at least one). A closed-form method splits nothing."""
        return {}

    def validate(self) -> None:
        scopes = self.allowed_scopes()
        if self.parameter_scope() not in scopes:
            raise EraseError(f"scope must be one of {', '.join(scopes)}, got {self.parameter_scope()!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise EraseError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        check_seed(self.seed)
        for t in self.templates or []:
            if "{}" not in t:
                raise EraseError(f"prompt template {t!r} has no '{{}}' placeholder for the concept")


MAX_SEED = 2**32 - 1  # numpy's (accelerate's set_seed) limit


def check_seed(value, name: str = "seed") -> None:
    """EraseError unless ``value`` is an integer in [0, 2**32 - 1]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise EraseError(f"{name} must be an integer from 0 to {MAX_SEED}, got {value!r}")


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)  # an int is finite (and may be too large for a float)


def check_positive(cfg, *names: str, integer: bool = True) -> None:
    """EraseError naming the first of ``names`` that is not a positive integer (or finite number)."""
    for name in names:
        value = getattr(cfg, name)
        kinds = int if integer else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool) or not value > 0 or not _finite(value):
            raise EraseError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_nonnegative(cfg, *names: str) -> None:
    """EraseError naming the first of ``names`` that is not a finite number >= 0."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or not _finite(value):
            raise EraseError(f"{name} must be a number >= 0, got {value!r}")


@dataclass
class MethodConfig(BaseConfig):
    """Settings every fine-tuning method shares (a closed-form method derives from BaseConfig)."""

    scope: str = option("full", "trainable UNet parameters: full | cross_attn | cross_attn_kv | no_cross_attn")
    lr: float = option(1e-5, "learning rate")
    optimizer: str = option("adamw", "adamw | adam")
    weight_decay: float = option(0.0, "optimizer weight decay")
    batch_size: int = option(1, "items per step")
    grad_clip: float | None = option(1.0, "max gradient norm (null: no clipping)")
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet")
    n_forget_images: int = option(8, "images generated per run from the concept prompts (data-free)")
    generation_steps: int = option(25, "sampling steps when generating training images")
    guidance_scale: float = option(7.5, "classifier-free guidance when generating training images")

    def split_items(self) -> dict[str, int]:
        return {"batch_size": self.batch_size}

    def validate(self) -> None:
        super().validate()
        check_positive(self, "lr", integer=False)
        if self.optimizer not in ("adamw", "adam"):
            raise EraseError(f"optimizer must be adamw or adam, got {self.optimizer!r}")
        check_nonnegative(self, "weight_decay")
        check_positive(self, "batch_size", "n_forget_images", "generation_steps")
        if self.grad_clip is not None:
            check_positive(self, "grad_clip", integer=False)


# The method to start with: measured on the bundled toy world (BENCHMARKS.md), the one that erases
# every kind of concept (also on held-out phrasings), keeps the rest within a few points (colours
# cost their neighbours most) and comes back least under attack; 'uce' is the fast, cleaner one that
# textual inversion undoes. The default of the API, the CLI and the app.
RECOMMENDED = "rece"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    run: Callable
    summary: str
    toyworld: Mapping[str, object]  # measured overrides for the bundled toy-world model


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type, run: Callable, summary: str, toyworld: Mapping[str, object] | None = None) -> None:
    _REGISTRY[name] = MethodSpec(name, config_cls, run, summary, dict(toyworld or {}))


def _load_builtin() -> None:
    """Import every method module of this package once (each registers itself)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS:
            importlib.import_module(f"{__name__}.{info.name}")


_NOT_METHODS = {"job"}  # helper modules of this package that register nothing


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> MethodSpec:
    _load_builtin()
    key = str(name).lower().strip()
    if key not in _REGISTRY:
        raise EraseError(f"unknown method {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def _coerce(name: str, value, annotation):
    """Check a YAML value against the dataclass annotation (int, float, bool, str, list, or X | None)."""
    args = typing.get_args(annotation)
    if value is None:
        if type(None) in args:
            return None
        raise EraseError(f"setting {name} may not be null")
    kinds = [a for a in args if a is not type(None)] if args and typing.get_origin(annotation) is not list else [annotation]
    base = typing.get_origin(kinds[0]) or kinds[0]
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (bool, str, list, dict) and isinstance(value, base):
        return value
    raise EraseError(f"setting {name} must be of type {getattr(base, '__name__', base)}, got {value!r}")


def build_config(config_cls: type, label: str, presets: Mapping[str, object] | None, overrides: Mapping[str, object] | None):
    """``config_cls`` from ``presets`` then ``overrides``, checked: unknown keys and value types
    (named with ``label``, e.g. "method uce"), then the config's own ``validate()``."""
    values = dict(presets or {})
    values.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise EraseError(f"unknown setting(s) for {label}: {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(config_cls)
    config = config_cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    config.validate()
    return config


def make_config(name: str, overrides: Mapping[str, object] | None = None, *, toyworld: bool = False):
    """The method's config: paper defaults, then toy-world presets (if asked), then overrides."""
    spec = get(name)
    return build_config(spec.config_cls, f"method {spec.name}", spec.toyworld if toyworld else None, overrides)


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EraseError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EraseError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EraseError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def load_config(name: str, source: str | Path | Mapping[str, object] | None = None, *, toyworld: bool = False):
    """Config from a YAML file (optionally with a top-level ``method:`` key) or a dict."""
    data = read_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
    declared = data.pop("method", None)
    if declared is not None and str(declared).lower() != get(name).name:
        raise EraseError(f"config is for method {declared!r}, not {name!r}")
    return make_config(name, data, toyworld=toyworld)


def precheck_config(name: str, source: str | Path | Mapping[str, object] | None = None, *, toyworld: bool = False) -> None:
    """Refuse settings that no model could take, before the (slow) model load.

    The model decides the base the settings go on (a toy-world model's presets, else the paper's
    defaults), so settings that are wrong on one base only (an ``iterations`` below the paper's
    warm-up but above the toy preset's) wait for the full check once the model is known.
    ``toyworld``: the likelier base, whose message is shown when both refuse.
    """
    errors = []
    for base in (toyworld, not toyworld):
        try:
            load_config(name, source, toyworld=base)
            return
        except EraseError as e:
            errors.append(e)
    raise errors[0]


def describe(name: str) -> list[tuple[str, object, str]]:
    """(field, default, help) for each setting of a method: for --help texts and the app."""
    spec = get(name)
    return [
        (f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory(), f.metadata.get("help", ""))
        for f in dataclasses.fields(spec.config_cls)
    ]
