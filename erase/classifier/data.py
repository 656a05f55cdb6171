"""Bundled datasets and forget-set specifications.

Datasets come from scikit-learn (no download): ``digits`` (8x8 images, 10 classes, pixels
scaled to [0, 1] so that the model's input space is the pixel space), ``diabetes``
(regression, standardised features) and ``synthetic`` (a larger ``make_classification``
set, for timing); and from the concept world's renderer: ``shapes`` / ``shapes-colours``
(32-px RGB images, 6 or 36 classes, :mod:`erase.classifier.shapes`). Every split is seeded.

Forget specifications: ``class:3`` (every training sample of class 3), ``random:0.1``
(a seeded random 10% of the training set), ``indices:FILE`` (one training index per line,
or whitespace/comma separated) and, for PRU, ``k:10`` (k random points).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from erase.errors import EraseError

DATASETS = ("digits", "diabetes", "synthetic")  # tabular, seconds to train on (the app's list)
IMAGE_DATASETS = ("shapes", "shapes-colours")  # the concept world's images (erase.classifier.shapes)
ALL_DATASETS = DATASETS + IMAGE_DATASETS


@dataclass
class Dataset:
    """A train/test split. ``y`` holds int class ids (classification) or floats (regression)."""

    name: str
    task: str  # "classification" | "regression"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None = None
    # Valid range of the model's inputs (FGSM clips to it); None = unbounded.
    input_range: tuple[float, float] | None = None
    # Row of each training sample in the user's X (a held-out split was drawn from it); None = identity.
    rows: np.ndarray | None = None

    def positions(self, rows) -> np.ndarray:
        """Training positions of the user's rows (forget indices name rows of X as given)."""
        idx = np.asarray(rows, dtype=np.int64)
        if self.rows is None:
            return idx
        pos = np.searchsorted(self.rows, idx)
        ok = (pos < len(self.rows)) & (self.rows[np.minimum(pos, len(self.rows) - 1)] == idx)
        if not ok.all():
            raise EraseError(f"row {int(idx[~ok][0])} of the data is not a training sample (held out as test, or out of range)")
        return pos

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"


def _split(X, y, test_size, seed, stratify):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y if stratify else None)


def load_dataset(name: str, seed: int = 0, n_samples: int | None = None, n_features: int = 40) -> Dataset:
    """Load a bundled dataset with a seeded 80/20 split.

    ``n_samples`` applies to ``synthetic`` (default 4000) and the image datasets ``shapes`` /
    ``shapes-colours`` (default 24000, rendered on the fly); ``n_features`` to ``synthetic``.
    """
    if name in IMAGE_DATASETS:
        from erase.classifier.shapes import load_shapes

        return load_shapes(name, n_samples or 24000, seed)
    n_samples = n_samples or 4000
    from sklearn import datasets as skd

    if name == "digits":
        X, y = skd.load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        Xtr, Xte, ytr, yte = _split(X, y.astype(np.int64), 0.2, seed, True)
        return Dataset(name, "classification", Xtr, ytr, Xte, yte, n_classes=10, input_range=(0.0, 1.0))
    if name == "diabetes":
        X, y = skd.load_diabetes(return_X_y=True)
        Xtr, Xte, ytr, yte = _split(X, y, 0.2, seed, False)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-12
        return Dataset(name, "regression", (Xtr - mu) / sd, ytr.astype(np.float64), (Xte - mu) / sd, yte.astype(np.float64))
    if name == "synthetic":
        X, y = skd.make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 2),
            n_redundant=0, n_classes=4, n_clusters_per_class=2, class_sep=1.5, random_state=seed,
        )
        Xtr, Xte, ytr, yte = _split(X.astype(np.float32), y.astype(np.int64), 0.2, seed, True)
        return Dataset(name, "classification", Xtr, ytr, Xte, yte, n_classes=4, input_range=None)
    raise EraseError(f"unknown dataset {name!r}; choose from {', '.join(ALL_DATASETS)}")


@dataclass
class ForgetSet:
    """Indices into the training set to forget, sorted and unique."""

    indices: np.ndarray
    spec: str
    forget_class: int | None = None

    @property
    def kind(self) -> str:
        return "class" if self.forget_class is not None else "samples"

    def __len__(self) -> int:
        return int(len(self.indices))


def validate_indices(indices, n_train: int, *, allow_all: bool = False) -> np.ndarray:
    """Check a forget set against a training set of ``n_train`` points; return sorted unique ints."""
    idx = np.asarray(indices)
    if idx.size == 0:
        raise EraseError("the forget set is empty: nothing to unlearn")
    if not np.issubdtype(idx.dtype, np.integer):
        if np.issubdtype(idx.dtype, np.floating) and np.all(np.mod(idx, 1) == 0):
            idx = idx.astype(np.int64)
        else:
            raise EraseError(f"forget indices must be integers, got dtype {idx.dtype}")
    idx = np.unique(idx.astype(np.int64).ravel())
    bad = idx[(idx < 0) | (idx >= n_train)]
    if bad.size:
        raise EraseError(f"forget index {int(bad[0])} is out of range for a training set of {n_train} samples")
    if not allow_all and idx.size >= n_train:
        raise EraseError(f"the forget set covers the whole training set ({n_train} samples): nothing would remain")
    return idx


def class_indices(data: Dataset, cls: int) -> np.ndarray:
    if not data.is_classification:
        raise EraseError(f"class-wise forgetting needs a classification dataset; {data.name!r} is {data.task}")
    if not (0 <= cls < int(data.n_classes)):
        raise EraseError(f"unknown class {cls} for dataset {data.name!r} (classes 0..{int(data.n_classes) - 1})")
    return np.flatnonzero(data.y_train == cls)


def _read_indices_file(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise EraseError(f"forget indices file not found: {path}")
    tokens = [t for t in re.split(r"[\s,]+", p.read_text()) if t]
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise EraseError(f"forget indices file {path} holds a non-integer entry {bad!r}") from None


def parse_forget(spec: str, data: Dataset, seed: int = 0) -> ForgetSet:
    """Turn ``class:C`` / ``random:FRACTION`` / ``k:COUNT`` / ``indices:FILE`` into a :class:`ForgetSet`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EraseError(f"malformed forget spec {spec!r}; use class:C, random:FRACTION, k:COUNT or indices:FILE")
    kind, _, value = spec.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    rng = np.random.default_rng(seed)
    if kind == "class":
        try:
            cls = int(value)
        except ValueError:
            raise EraseError(f"malformed forget spec {spec!r}: class must be an integer") from None
        idx = class_indices(data, cls)
        return ForgetSet(validate_indices(idx, data.n_train), spec, forget_class=cls)
    if kind == "random":
        try:
            frac = float(value)
        except ValueError:
            raise EraseError(f"malformed forget spec {spec!r}: fraction must be a number in (0, 1)") from None
        if not (0.0 < frac < 1.0):
            raise EraseError(f"forget fraction {value} must be in (0, 1)")
        n = int(round(frac * data.n_train))
        if n == 0:
            raise EraseError(f"forget fraction {value} selects no sample of {data.n_train}")
        idx = rng.choice(data.n_train, size=n, replace=False)
        return ForgetSet(validate_indices(idx, data.n_train), spec)
    if kind == "k":
        try:
            k = int(value)
        except ValueError:
            raise EraseError(f"malformed forget spec {spec!r}: k must be an integer") from None
        if k < 1:
            raise EraseError(f"the forget set is empty: k = {k}")
        if k >= data.n_train:
            raise EraseError(f"k = {k} deletes the whole training set of {data.n_train} samples")
        idx = rng.choice(data.n_train, size=k, replace=False)
        return ForgetSet(validate_indices(idx, data.n_train), spec)
    if kind == "indices":
        if not value:
            raise EraseError(f"malformed forget spec {spec!r}: give a file, indices:FILE")
        rows = _read_indices_file(value)
        if data.rows is not None and rows.size:
            rows = data.positions(validate_indices(rows, int(data.rows.max()) + 1 + len(data.y_test)))
        return ForgetSet(validate_indices(rows, data.n_train), spec)
    raise EraseError(f"malformed forget spec {spec!r}: unknown kind {kind!r} (use class, random, k or indices)")


def as_forget_set(forget, data: Dataset, seed: int = 0) -> ForgetSet:
    """A :class:`ForgetSet` from a ForgetSet, a spec (``class:3``, ...) or training indices (checked)."""
    if isinstance(forget, ForgetSet):
        return ForgetSet(validate_indices(forget.indices, data.n_train), forget.spec, forget.forget_class)
    if isinstance(forget, str):
        return parse_forget(forget, data, seed)
    idx = np.asarray(forget)
    if data.rows is not None and idx.size:
        idx = data.positions(validate_indices(idx, len(data.rows) + len(data.y_test)))
    idx = validate_indices(idx, data.n_train)
    return ForgetSet(idx, f"indices ({len(idx)})")


def retain_indices(n_train: int, forget: np.ndarray) -> np.ndarray:
    mask = np.ones(n_train, dtype=bool)
    mask[np.asarray(forget, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def linear_view(data: Dataset) -> Dataset:
    """The dataset as PRU's linear models see it: regression as is; classification as the binary
    task "odd vs even class id" (labels 0/1) for logistic regression."""
    if not data.is_classification:
        return data
    return Dataset(
        data.name, "classification", data.X_train, (data.y_train % 2).astype(np.int64),
        data.X_test, (data.y_test % 2).astype(np.int64), n_classes=2, input_range=data.input_range,
    )
