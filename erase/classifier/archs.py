"""Classifier architectures by name, so that a model can be rebuilt in another process.

An :class:`Arch` is a name and JSON keyword arguments; calling it builds a fresh model, so it
serves as the factory of SISA's constituents and of retraining, and it is what a SISA folder
and ``save_model`` record. Names:

- ``mlp``: the bundled :class:`~erase.classifier.models.MLP` (``in_features``, ``n_classes``, ``hidden``);
- ``resnet18``: :func:`~erase.classifier.resnet.resnet18` (``n_classes``, ``width``, ``in_channels``,
  ``small_input``), torchvision's layout and key names;
- ``package.module:callable``: any importable function or class returning an ``nn.Module``,
  called with the keyword arguments.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from erase.errors import EraseError

BUILTIN_ARCHS = ("mlp", "resnet18")


@dataclass(frozen=True)
class Arch:
    """A buildable architecture: ``Arch('resnet18', {'n_classes': 6, 'width': 8})()`` -> nn.Module."""

    name: str
    kwargs: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.name not in BUILTIN_ARCHS and ":" not in self.name:
            raise EraseError(f"unknown architecture {self.name!r}; use {', '.join(BUILTIN_ARCHS)} or package.module:callable")
        try:
            json.dumps(self.kwargs)
        except TypeError:
            raise EraseError(f"the keyword arguments of architecture {self.name!r} must be JSON values, got {self.kwargs!r}") from None

    def __call__(self) -> nn.Module:
        if self.name == "mlp":
            from erase.classifier.models import MLP

            kw = dict(self.kwargs)
            kw["hidden"] = tuple(kw.get("hidden", (128,)))
            return _build(MLP, kw, self.name)
        if self.name == "resnet18":
            from erase.classifier.resnet import resnet18

            return _build(resnet18, self.kwargs, self.name)
        return _build(_import_callable(self.name), self.kwargs, self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d) -> "Arch":
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("kwargs", {}), dict):
            raise EraseError(f"malformed architecture record {d!r}")
        return cls(d["name"], dict(d.get("kwargs", {})))


def _import_callable(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise EraseError(f"malformed architecture {spec!r}; use package.module:callable")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise EraseError(f"cannot import {mod_name!r} for architecture {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EraseError(f"{mod_name!r} has no attribute {attr!r} (architecture {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EraseError(f"architecture {spec!r} is not callable")
    return obj


def _build(fn, kwargs: dict, name: str) -> nn.Module:
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise EraseError(f"cannot build architecture {name!r} with {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise EraseError(f"architecture {name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def arch_for_data(name: str, input_shape: tuple[int, ...], n_classes: int, **overrides) -> Arch:
    """The architecture ``name`` sized for inputs of ``input_shape`` (one sample) and ``n_classes``."""
    if name == "mlp":
        kw = {"in_features": int(math.prod(input_shape)), "n_classes": int(n_classes), "hidden": [128]}
    elif name == "resnet18":
        if len(input_shape) != 3:
            raise EraseError(f"resnet18 needs image inputs (channels, height, width), got samples of shape {tuple(input_shape)}")
        kw = {"n_classes": int(n_classes), "width": 64, "in_channels": int(input_shape[0]),
              "small_input": bool(max(input_shape[1:]) <= 64)}
    else:
        kw = {}
    kw.update(overrides)
    return Arch(name, kw)


def arch_from_weights(name: str, state: dict[str, torch.Tensor], metadata: dict | None = None, kwargs: dict | None = None) -> Arch:
    """Infer the architecture's arguments from a state dict (``kwargs`` override what is inferred)."""
    meta = metadata or {}
    kw: dict = {}
    if name == "mlp":
        if "model_config" in meta:
            kw = json.loads(meta["model_config"])
        else:
            linears = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight") and state[k].dim() == 2})
            if "head" not in linears:
                raise EraseError("these weights are not an erase MLP (no 'head.weight'); give --arch for their architecture")
            body = [k for k in linears if k != "head"]
            body.sort(key=lambda k: int(k.split(".")[1]))
            first = state[f"{body[0]}.weight"] if body else state["head.weight"]
            kw = {"in_features": int(first.shape[1]), "n_classes": int(state["head.weight"].shape[0]),
                  "hidden": [int(state[f"{b}.weight"].shape[0]) for b in body]}
    elif name == "resnet18":
        if "conv1.weight" not in state or "fc.weight" not in state:
            raise EraseError("these weights are not a ResNet-18 (no conv1.weight / fc.weight)")
        c1 = state["conv1.weight"]
        kw = {"n_classes": int(state["fc.weight"].shape[0]), "width": int(c1.shape[0]), "in_channels": int(c1.shape[1]),
              "small_input": int(c1.shape[-1]) == 3}
    kw.update(kwargs or {})
    return Arch(name, kw)
