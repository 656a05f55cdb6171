"""Classifier-side unlearning: one registry, two entry points.

    from erase.classifier import unlearn
    result = unlearn(model, (X, y), forget=[3, 17, 250], method="salun")   # your model, your data
    result.model, result.metrics, result.seconds, result.stats

``unlearn`` (:mod:`erase.classifier.api`) takes any ``torch.nn.Module`` classifier (the head is
found automatically, or named with ``head=``) and data as numpy arrays, a
``torch.utils.data.Dataset``, an ``.npz`` file or an image folder, or a built-in dataset name.
:func:`run_method` is the layer under it, on a loaded :class:`Dataset`::

    data = load_dataset("digits", seed=0)
    forget = parse_forget("class:3", data, seed=0)
    result = run_method("boundary-shrink", model, data, forget)      # -> UnlearnResult

Methods (``METHODS[name]`` holds the config dataclass, whose fields carry help text and the
paper's defaults): ``boundary-shrink``, ``boundary-expand``, ``salun``, ``retrain`` (torch
classifiers), ``sisa`` (a fitted :class:`SISAModel`, updated in place: its checkpoints are its
state) and ``pru`` (a fitted :class:`LinearModel`). Every method except SISA leaves the model
it is given untouched and returns a new one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from erase.classifier.boundary import BoundaryExpandConfig, BoundaryShrinkConfig, boundary_expand, boundary_shrink
from erase.classifier.data import DATASETS, Dataset, ForgetSet, as_forget_set, load_dataset, parse_forget, retain_indices
from erase.classifier.linear import LinearModel, fit_linear
from erase.classifier.pru import PRUConfig, prepare, pru_delete
from erase.classifier.retrain import RetrainConfig, retrain
from erase.classifier.salun import SalUnConfig, salun
from erase.classifier.executors import EXECUTORS, make_executor
from erase.classifier.sisa import SISAConfig, SISAModel
from erase.errors import EraseError

__all__ = [
    "METHODS",
    "MethodSpec",
    "UnlearnResult",
    "unlearn",
    "run_method",
    "get_method",
    "make_config",
    "load_dataset",
    "parse_forget",
    "Dataset",
    "ForgetSet",
    "DATASETS",
    "SISAModel",
    "SISAConfig",
    "EXECUTORS",
    "make_executor",
    "LinearModel",
    "fit_linear",
]


@dataclass
class UnlearnResult:
    model: object
    seconds: float
    stats: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # model name -> metric -> value (filled by unlearn)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    model_kind: str  # "torch" | "linear" | "sisa"
    summary: str
    run: Callable


def _forget_ids(forget, data: Dataset) -> np.ndarray:
    return as_forget_set(forget, data).indices


def _run_shrink(model, data, ids, cfg, seed, ctx):
    return boundary_shrink(model, data.X_train[ids], data.y_train[ids], cfg, data.input_range, seed)


def _run_expand(model, data, ids, cfg, seed, ctx):
    return boundary_expand(model, data.X_train[ids], data.y_train[ids], cfg, seed, head=ctx.get("head"))


def _run_salun(model, data, ids, cfg, seed, ctx):
    r = retain_indices(data.n_train, ids)
    return salun(model, data.X_train[ids], data.y_train[ids], data.X_train[r], data.y_train[r], int(data.n_classes), cfg, seed)


def _run_retrain(model, data, ids, cfg, seed, ctx):
    r = retain_indices(data.n_train, ids)
    return retrain(model, data.X_train[r], data.y_train[r], cfg, seed, factory=ctx.get("factory"), train_fn=ctx.get("train_fn"))


def _run_sisa(model: SISAModel, data, ids, cfg, seed, ctx):
    if len(model.alive) != data.n_train:
        raise EraseError(f"the SISA model was trained on {len(model.alive)} samples, the dataset has {data.n_train}")
    stats = model.delete(ids)
    return model, stats


def _run_pru(model: LinearModel, data, ids, cfg, seed, ctx):
    stats = {}
    if model.cache is None or len(model.cache.z) != data.n_train:
        t0 = time.perf_counter()
        prepare(model, data.X_train, data.y_train)
        stats["prepare_seconds"] = time.perf_counter() - t0
    return pru_delete(model, ids, cfg), stats


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("boundary-shrink", BoundaryShrinkConfig, "torch", "FGSM nearest-but-incorrect labels on D_f (class-wise)", _run_shrink),
        MethodSpec("boundary-expand", BoundaryExpandConfig, "torch", "shadow class on D_f, then pruned (class-wise)", _run_expand),
        MethodSpec("salun", SalUnConfig, "torch", "saliency-masked random labels on D_f + true labels on D_r", _run_salun),
        MethodSpec("retrain", RetrainConfig, "torch", "retrain from scratch on D \\ D_f (the reference)", _run_retrain),
        MethodSpec("sisa", SISAConfig, "sisa", "exact deletion: retrain affected shards from the last valid slice checkpoint", _run_sisa),
        MethodSpec("pru", PRUConfig, "linear", "projective residual update for ridge/logistic regression", _run_pru),
    ]
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise EraseError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def make_config(method: str, overrides: dict | None = None):
    """The method's config dataclass with ``overrides`` applied (unknown keys are an error)."""
    cls = get_method(method).config_cls
    overrides = dict(overrides or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    bad = [k for k in overrides if k not in names]
    if bad:
        raise EraseError(f"unknown option {bad[0]!r} for {method}; options: {', '.join(names)}")
    return cls(**overrides)


def check_model(spec: MethodSpec, model, data: Dataset) -> None:
    if spec.model_kind == "linear":
        if not isinstance(model, LinearModel):
            raise EraseError(f"PRU needs a linear model (ridge or logistic regression), got {type(model).__name__}")
        return
    if not data.is_classification:
        raise EraseError(f"{spec.name} needs a classification dataset; {data.name!r} is {data.task}")
    if spec.model_kind == "sisa" and not isinstance(model, SISAModel):
        raise EraseError(f"sisa needs a fitted SISAModel, got {type(model).__name__}")
    if spec.model_kind == "torch" and not isinstance(model, nn.Module):
        raise EraseError(f"{spec.name} needs a torch classifier (nn.Module), got {type(model).__name__}")


def run_method(
    method: str, model, data: Dataset, forget, config=None, seed: int = 0, *,
    head: str | None = None, factory: Callable | None = None, train_fn: Callable | None = None,
) -> UnlearnResult:
    """Unlearn ``forget`` (a ForgetSet, a spec such as ``'class:3'``, or training indices) from ``model``.

    ``head``: the dotted name of the classification head (found automatically when None);
    ``factory``: builds a fresh model for ``retrain`` (default: a re-initialised copy);
    ``train_fn(model, X, y)``: trains a fresh model for ``retrain`` (default: the project's recipe).
    """
    spec = get_method(method)
    check_model(spec, model, data)
    ids = _forget_ids(forget, data)
    cfg = config if config is not None else spec.config_cls()
    if not isinstance(cfg, spec.config_cls):
        raise EraseError(f"{method} takes a {spec.config_cls.__name__}, got {type(cfg).__name__}")
    ctx = {"factory": factory, "train_fn": train_fn}
    if spec.model_kind == "torch":
        from erase.classifier.models import find_head

        ctx["head"] = find_head(model, data.X_train[:2], head, n_classes=int(data.n_classes))[0]
    t0 = time.perf_counter()
    new_model, stats = spec.run(model, data, ids, cfg, seed, ctx)
    return UnlearnResult(new_model, time.perf_counter() - t0, dict(stats))


from erase.classifier.api import unlearn  # noqa: E402  (the high-level entry point, built on run_method)
