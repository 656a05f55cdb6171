"""``unlearn(model, data, forget, method=...)``: your trained classifier, your data, a deletion request.

    from erase.classifier import unlearn
    result = unlearn(model, ("X.npy" arrays or a Dataset or "data.npz" or "images/"), forget=[3, 17],
                     method="salun")
    result.model        # the unlearned copy (your model is left as it was; SISA is updated in place)
    result.metrics      # {"original": {...}, "<method>": {...}}: UA, RA, TA, MIA (+ TA_forget class-wise)

``forget``: training indices (rows of your X as given), ``class:C``, ``random:FRACTION``,
``k:COUNT`` or ``indices:FILE``. ``config``: the method's config dataclass or a mapping of
its options. ``head``: the dotted name of the classification head (found automatically:
the ``nn.Linear`` whose output is the model's). ``train_fn(model, X, y)``: your training code,
used by ``retrain``; ``factory()``: builds the fresh model ``retrain`` trains (default: a copy of
yours with every layer's ``reset_parameters``; a parameter no layer resets is an error). The
data's labels must fit the head (an EraseError says which does not).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from torch import nn

from erase.errors import EraseError


def forget_rows(forget) -> np.ndarray | None:
    """Rows named explicitly by a forget request (indices or ``indices:FILE``), to keep out of a held-out split."""
    from erase.classifier.data import ForgetSet, _read_indices_file

    if isinstance(forget, ForgetSet) or forget is None:
        return None
    if isinstance(forget, str):
        kind, _, value = forget.partition(":")
        return _read_indices_file(value.strip()) if kind.strip().lower() == "indices" and value.strip() else None
    idx = np.asarray(forget)
    return idx.astype(np.int64) if idx.size and np.issubdtype(idx.dtype, np.number) else None


def _make_config(method: str, config):
    from erase.classifier import get_method, make_config

    spec = get_method(method)
    if config is None:
        return spec.config_cls()
    if isinstance(config, dict):
        return make_config(method, config)
    if not isinstance(config, spec.config_cls):
        raise EraseError(f"{method} takes a {spec.config_cls.__name__} or a mapping of its options, got {type(config).__name__}")
    return config


def _evaluate(model, data, forget, seed) -> dict[str, float] | None:
    from erase.classifier.linear import LinearModel
    from erase.classifier.metrics import classification_metrics
    from erase.classifier.models import predict_proba

    if isinstance(model, nn.Module):
        predict = lambda X: predict_proba(model, X)  # noqa: E731
    elif isinstance(model, LinearModel):
        if model.kind != "logistic":
            return {"R2": model.score(data.X_test, data.y_test)}
        predict = model.predict_proba
    else:
        predict = model.predict_proba
    return classification_metrics(predict, data, forget.indices, forget.forget_class, seed=seed)


def unlearn(
    model,
    data,
    forget,
    method: str = "salun",
    config=None,
    *,
    seed: int = 0,
    head: str | None = None,
    train_fn: Callable | None = None,
    factory: Callable | None = None,
    evaluate: bool = True,
    image_size: int | None = None,
):
    """Unlearn ``forget`` from ``model`` trained on ``data``; returns an UnlearnResult with metrics."""
    from erase.classifier import get_method, run_method
    from erase.classifier.data import as_forget_set
    from erase.classifier.sources import as_dataset

    if isinstance(model, str):
        raise EraseError(f"unlearn(model, data, forget, method=...) takes the model first, got the string {model!r}"
                         " (run_method(method, model, data, forget) is the method-first layer)")
    spec = get_method(method)
    cfg = _make_config(method, config)
    if spec.model_kind == "torch" and not isinstance(model, nn.Module):
        raise EraseError(f"{method} needs a torch classifier (nn.Module), got {type(model).__name__}")
    ds = as_dataset(data, seed=seed, image_size=image_size, keep=forget_rows(forget))
    fs = as_forget_set(forget, ds, seed)
    if isinstance(model, nn.Module) and ds.is_classification:
        from erase.classifier.models import find_head

        head = find_head(model, ds.X_train[:2], head, n_classes=int(ds.n_classes))[0]  # before anything runs
    before = _evaluate(model, ds, fs, seed) if evaluate and ds.is_classification else None
    t0 = time.perf_counter()
    res = run_method(method, model, ds, fs, cfg, seed, head=head, train_fn=train_fn,
                     factory=factory or getattr(model, "erase_arch", None))
    res.seconds = time.perf_counter() - t0
    if evaluate and ds.is_classification:
        res.metrics = {"original": before, method: _evaluate(res.model, ds, fs, seed)}
    res.stats.setdefault("n_forget", len(fs))
    return res
