"""Your data as a :class:`~erase.classifier.data.Dataset`: arrays, ``.npz`` files, image folders, torch datasets.

- numpy arrays: ``(X, y)`` or ``(X, y, X_test, y_test)``, or a mapping with those keys;
- an ``.npz`` file holding arrays ``X`` and ``y`` (optionally ``X_test`` and ``y_test``);
- an image folder in torchvision's ``ImageFolder`` layout (``DIR/<class>/<image>``, classes in
  sorted order, the same extensions), read with PIL as float RGB in [0, 1], ``(N, 3, H, W)``;
  a folder holding ``train/`` and ``test/`` gives both splits;
- a ``torch.utils.data.Dataset`` whose items are ``(input, label)`` (e.g. torchvision's
  ``ImageFolder`` with ``ToTensor``): read once into arrays;
- a built-in dataset name (``digits``, ``shapes``, ...).

Without a test split, a seeded stratified 20 % of the data is held out (the test set TA and the
membership-inference attacks need unseen samples); the training samples keep their order and
``Dataset.rows`` their row numbers in ``X``, so forget indices name rows of ``X`` as given, and
rows named in ``keep`` (the forget set) are never held out. If your model was trained on all of
``X``, give ``X_test``/``y_test`` of unseen data: held-out rows it has seen would count as unseen.
Labels must be integers 0..K-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from erase.classifier.data import Dataset, load_dataset
from erase.errors import EraseError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
TEST_FRACTION = 0.2


def _labels(y, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise EraseError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise EraseError(f"{where}: labels must be integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise EraseError(f"{where}: labels must be class ids 0..K-1, found {int(y.min())}")
    return y


def _inputs(X, n: int, where: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise EraseError(f"{where}: inputs must be a numeric array, got dtype {X.dtype}")
    if X.ndim < 2 or len(X) != n:
        raise EraseError(f"{where}: {len(X) if X.ndim else 0} inputs for {n} labels (inputs need shape (N, ...))")
    X = np.ascontiguousarray(X, dtype=np.float32)  # channels-last views crash some CPU conv kernels
    if not np.all(np.isfinite(X)):
        raise EraseError(f"{where}: the inputs hold NaN or infinite values")
    return X


def from_arrays(X, y, X_test=None, y_test=None, name: str = "arrays", seed: int = 0, n_classes: int | None = None,
                input_range: tuple[float, float] | None = None, keep=None) -> Dataset:
    """A Dataset from arrays; without a test split, a seeded stratified 20 % is held out (never rows in ``keep``)."""
    y = _labels(y, name)
    X = _inputs(X, len(y), name)
    if (X_test is None) != (y_test is None):
        raise EraseError(f"{name}: give both X_test and y_test, or neither")
    if len(y) < 2:
        raise EraseError(f"{name}: needs at least 2 samples, got {len(y)}")
    rows = None
    if X_test is None:
        rows, test_rows = _held_out_split(y, seed, keep, name)
        X, X_test, y, y_test = X[rows], X[test_rows], y[rows], y[test_rows]
    else:
        y_test = _labels(y_test, f"{name} (test)")
        X_test = _inputs(X_test, len(y_test), f"{name} (test)")
        if X_test.shape[1:] != X.shape[1:]:
            raise EraseError(f"{name}: test inputs have shape {X_test.shape[1:]}, training inputs {X.shape[1:]}")
    K = int(max(y.max(), y_test.max() if len(y_test) else 0)) + 1
    if n_classes is not None:
        if K > n_classes:
            raise EraseError(f"{name}: label {K - 1} is out of range for {n_classes} classes")
        K = n_classes
    if K < 2:
        raise EraseError(f"{name}: a classifier needs at least 2 classes, the labels hold {K}")
    return Dataset(name, "classification", X, y, X_test, y_test, n_classes=K, input_range=input_range, rows=rows)


def _held_out_split(y: np.ndarray, seed: int, keep, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows), both ascending; a seeded share per class, never a row of ``keep``."""
    n = len(y)
    free = np.ones(n, dtype=bool)
    if keep is not None:
        keep = np.asarray(keep, dtype=np.int64)
        bad = keep[(keep < 0) | (keep >= n)]
        if bad.size:
            raise EraseError(f"forget index {int(bad[0])} is out of range for {name} of {n} samples")
        free[keep] = False
    rng = np.random.default_rng([seed, 20])
    test = []
    for c in np.unique(y):
        cand = np.flatnonzero((y == c) & free)
        k = int(round(TEST_FRACTION * np.sum(y == c)))
        test.append(rng.choice(cand, min(k, len(cand)), replace=False))
    test_rows = np.sort(np.concatenate(test)).astype(np.int64)
    if len(test_rows) == 0:
        raise EraseError(f"{name}: too few samples to hold out a test split; give X_test and y_test")
    train_rows = np.setdiff1d(np.arange(n), test_rows)
    return train_rows, test_rows


def load_npz(path, seed: int = 0, keep=None) -> Dataset:
    """An ``.npz`` with ``X``, ``y`` (and optionally ``X_test``, ``y_test``); never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise EraseError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise EraseError(f"{path} holds object arrays, which are not read (pickle): {e}") from None
    except (OSError, EOFError) as e:
        raise EraseError(f"{path} is not a readable .npz file: {e}") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise EraseError(f"{path} has no array {missing[0]!r} (it holds {', '.join(sorted(arrays)) or 'nothing'}; need X and y)")
    X, y = arrays["X"], arrays["y"]
    input_range = (0.0, 1.0) if X.size and X.min() >= 0 and X.max() <= 1 else None
    return from_arrays(X, y, arrays.get("X_test"), arrays.get("y_test"), name=path.name, seed=seed, input_range=input_range, keep=keep)


def _image_files(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise EraseError(f"{folder} holds no class folders (ImageFolder layout: DIR/<class>/<image>)")
    items = []
    for k, c in enumerate(classes):
        for p in sorted((folder / c).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
                items.append((p, k))
    if not items:
        raise EraseError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    return classes, items


def _read_images(items, size: int | None, where: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    arrays, shape = [], None
    for p, _ in items:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise EraseError(f"cannot read image {p}: {e}") from None
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise EraseError(f"{where}: images differ in size ({p.name} is {a.shape[1]}x{a.shape[0]}, the first "
                             f"{shape[1]}x{shape[0]}); give an image size to resize them")
        arrays.append(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return np.stack(arrays), np.array([k for _, k in items], dtype=np.int64)


def load_image_folder(folder, seed: int = 0, size: int | None = None, keep=None) -> Dataset:
    """An ImageFolder-layout folder (or one with ``train/`` and ``test/`` of that layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EraseError(f"image folder not found: {folder}")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        classes, items = _image_files(folder / "train")
        test_classes, test_items = _image_files(folder / "test")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise EraseError(f"{folder / 'test'} has class {unknown[0]!r} that {folder / 'train'} lacks")
        remap = {k: classes.index(c) for k, c in enumerate(test_classes)}
        X, y = _read_images(items, size, folder / "train")
        Xt, yt = _read_images(test_items, size, folder / "test")
        yt = np.array([remap[int(v)] for v in yt], dtype=np.int64)
        if Xt.shape[1:] != X.shape[1:]:
            raise EraseError(f"{folder}: test images are {Xt.shape[3]}x{Xt.shape[2]}, training images {X.shape[3]}x{X.shape[2]}")
        data = from_arrays(X, y, Xt, yt, name=folder.name, seed=seed, n_classes=len(classes), input_range=(0.0, 1.0))
    else:
        classes, items = _image_files(folder)
        X, y = _read_images(items, size, folder)
        data = from_arrays(X, y, name=folder.name, seed=seed, n_classes=len(classes), input_range=(0.0, 1.0), keep=keep)
    return data


def from_torch_dataset(ds, X_test=None, y_test=None, seed: int = 0, name: str | None = None, keep=None) -> Dataset:
    """Read a torch Dataset of ``(input, label)`` items into arrays (once)."""
    import torch

    name = name or type(ds).__name__
    try:
        n = len(ds)
    except TypeError:
        raise EraseError(f"{name} has no length; give a map-style torch Dataset") from None
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise EraseError(f"{name}[{i}] is not an (input, label) pair")
        x, label = item[0], item[1]
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        label = label.item() if isinstance(label, torch.Tensor) else label
        xs.append(x)
        ys.append(label)
    if not xs:
        raise EraseError(f"{name} is empty")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise EraseError(f"{name}: inputs differ in shape ({', '.join(map(str, sorted(shapes)[:2]))}); resize them in the dataset's transform")
    lo, hi = float(min(x.min() for x in xs)), float(max(x.max() for x in xs))
    input_range = (0.0, 1.0) if lo >= 0 and hi <= 1 else None
    if X_test is not None and not isinstance(X_test, np.ndarray) and hasattr(X_test, "__getitem__") and y_test is None:
        test = from_torch_dataset(X_test, name=f"{name} (test)")
        X_test, y_test = np.concatenate([test.X_train, test.X_test]), np.concatenate([test.y_train, test.y_test])
    return from_arrays(np.stack(xs), np.array(ys), X_test, y_test, name=name, seed=seed, input_range=input_range, keep=keep)


def as_dataset(data, seed: int = 0, image_size: int | None = None, keep=None) -> Dataset:
    """Whatever the user holds -> a Dataset (see the module docstring); ``keep``: rows never held out."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.suffix == ".npz":
            return load_npz(p, seed, keep)
        if p.is_dir():
            return load_image_folder(p, seed, image_size, keep)
        if isinstance(data, str) and not p.exists() and "/" not in data:
            return load_dataset(data, seed)
        raise EraseError(f"data {str(data)!r} is neither an .npz file, an image folder nor a built-in dataset")
    if isinstance(data, dict):
        if "X" not in data or "y" not in data:
            raise EraseError("a data mapping needs keys X and y (and optionally X_test, y_test)")
        return from_arrays(data["X"], data["y"], data.get("X_test"), data.get("y_test"), seed=seed, keep=keep)
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        return from_arrays(*data, seed=seed, keep=keep)
    try:
        import torch.utils.data as tud

        if isinstance(data, tud.Dataset):
            return from_torch_dataset(data, seed=seed, keep=keep)
    except ImportError:  # pragma: no cover
        pass
    raise EraseError(f"cannot read data of type {type(data).__name__}: give (X, y), (X, y, X_test, y_test), "
                     "a mapping, an .npz file, an image folder, a torch Dataset or a built-in name")
