"""A SISA model on disk: one folder that a new process reopens and keeps deleting from.

Layout (format ``erase-sisa``, version 1)::

    DIR/manifest.json                      the only file that says what the model is
    DIR/data-<token>.safetensors           X, y (deleted rows zeroed, labels -1), shard, slice
                                           [, X_test, y_test] [, rows: the user's row of each sample]
    DIR/ckpt/s<S>-r<R>-<token>.safetensors one per shard and slice (safetensors, never pickle)

``manifest.json`` holds the architecture (:class:`~erase.classifier.archs.Arch`), the SISA
config, the seed, the deleted ids, and for every file its SHA-256; for every checkpoint also
the hash of the sample ids it was trained on (SISA's slice key).

Atomicity: files are never overwritten. A save writes the new data and the changed
checkpoints under fresh names (each to a temp name, then renamed), then replaces
``manifest.json`` in one ``os.replace`` and only then removes the files the new manifest no
longer names. A process killed at any point leaves the previous manifest, with every file it
names intact, so the previous state loads; leftovers are removed by the next save.

Concurrency: :func:`locked` holds an exclusive advisory lock on ``DIR/.lock`` (the CLI takes it
around load, delete and save), and a save into the folder a model was loaded from is refused if
the manifest changed since (another process deleted in between).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from erase.errors import EraseError

FORMAT = "erase-sisa"
VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write a new safetensors file (temp name, fsync, rename); returns its SHA-256."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = _sha256(tmp)
    os.replace(tmp, path)
    return digest


def _replace_manifest(folder: Path, manifest: dict) -> None:
    """The commit point: the new manifest replaces the old one in one rename."""
    tmp = folder / f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)


@contextmanager
def locked(folder):
    """Exclusive lock on a SISA folder for the duration of a load-delete-save (fails fast if taken)."""
    import fcntl

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        _read_manifest(folder)  # the one-line error for a missing or foreign folder
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EraseError(f"another process is changing {folder}; try again when it has finished") from None
        try:
            yield folder
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _collect_garbage(folder: Path, manifest: dict) -> None:
    keep = {manifest["data"]["file"]} | {c["file"] for c in manifest["checkpoints"]}
    for p in list(folder.glob("data-*.safetensors")) + list((folder / "ckpt").glob("*.safetensors")):
        if p.relative_to(folder).as_posix() not in keep:
            p.unlink(missing_ok=True)
    for p in list(folder.glob(".*.tmp-*")) + list((folder / "ckpt").glob(".*.tmp-*")):
        p.unlink(missing_ok=True)


def _config_dict(cfg) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    d["checkpoint_dir"] = None  # the folder holds the checkpoints
    return d


def save_sisa(model, folder, X_test=None, y_test=None, overwrite: bool = False) -> Path:
    """Write ``model`` (a fitted SISAModel) to ``folder``; see the module docstring."""
    from erase.classifier.archs import Arch

    model._check_fitted()
    if not isinstance(model.factory, Arch):
        raise EraseError("this SISA model's constituents come from a plain callable, which another process cannot rebuild; "
                         "build it with an Arch (erase.classifier.archs) or mlp_factory to save it")
    folder = Path(folder)
    own = model.folder is not None and folder.resolve() == model.folder.resolve()
    if folder.exists():
        if not folder.is_dir():
            raise EraseError(f"{folder} exists and is not a folder")
        if (folder / MANIFEST).exists():
            if not own and not overwrite:
                raise EraseError(f"{folder} already holds a SISA model; refusing to overwrite it (pass overwrite)")
        elif any(folder.iterdir()):
            raise EraseError(f"{folder} is not empty and holds no SISA model; refusing to write into it")
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]

    alive = torch.as_tensor(model.alive)
    X = model.X.clone()
    X[~alive] = 0  # the deleted samples' data leave the folder with this save
    y = torch.where(alive, model.y, torch.full_like(model.y, -1))
    tensors = {"X": X, "y": y, "shard": torch.as_tensor(model.assignment.shard), "slice": torch.as_tensor(model.assignment.slice)}
    rows = getattr(model, "rows", None)
    if rows is not None:  # the user's row number of each training sample (deletion requests name rows)
        tensors["rows"] = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    if X_test is None and getattr(model, "test", None) is not None:
        X_test, y_test = model.test
    if X_test is not None:
        tensors["X_test"] = torch.as_tensor(np.asarray(X_test), dtype=torch.float32)
        tensors["y_test"] = torch.as_tensor(np.asarray(y_test), dtype=torch.long)
    data_name = f"data-{token}.safetensors"
    data_sha = _write_tensors(folder / data_name, tensors)

    old = {}
    if own:
        if _sha256(folder / MANIFEST) != getattr(model, "manifest_sha256", None):
            raise EraseError(f"{folder} was changed by another process since this model was loaded; load it again")
        prev = json.loads((folder / MANIFEST).read_text())
        old = {(c["shard"], c["slice"]): c for c in prev["checkpoints"]}
    checkpoints = []
    for s in range(model.assignment.n_shards):
        for r in range(model.assignment.n_slices):
            key = model.store.key(s, r)
            prev = old.get((s, r))
            if own and (s, r) in model.store.files and prev is not None and prev["key"] == key:
                checkpoints.append(prev)  # unchanged since it was loaded from this folder
                continue
            name = f"ckpt/s{s:03d}-r{r:03d}-{token}.safetensors"
            sha = _write_tensors(folder / name, model.store.get(s, r), {"key": key})
            checkpoints.append({"shard": s, "slice": r, "key": key, "file": name, "sha256": sha})
    _fsync_dir(folder / "ckpt")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.factory.to_dict(),
        "config": _config_dict(model.config),
        "seed": model.seed,
        "n_train": int(len(model.alive)),
        "n_shards": model.assignment.n_shards,
        "n_slices": model.assignment.n_slices,
        "input_shape": list(model.X.shape[1:]),
        "deleted": [int(i) for i in np.flatnonzero(~model.alive)],
        "data": {"file": data_name, "sha256": data_sha},
        "checkpoints": checkpoints,
    }
    _replace_manifest(folder, manifest)
    _collect_garbage(folder, manifest)
    model.manifest_sha256 = _sha256(folder / MANIFEST)
    model.folder = folder
    model.store.files = {(c["shard"], c["slice"]): folder / c["file"] for c in checkpoints}
    model.store.mem.clear()
    return folder


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EraseError(f"SISA folder not found: {folder}")
    if not path.is_file():
        raise EraseError(f"{folder} is not a saved SISA model (no {MANIFEST}): an incomplete save or another folder")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EraseError(f"{path} is not valid JSON: the SISA folder is damaged") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise EraseError(f"{path} is not an erase SISA manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("version") != VERSION:
        raise EraseError(f"{folder} was written by SISA format version {m.get('version')!r}; this erase reads version {VERSION}")
    need = ("arch", "config", "seed", "n_train", "n_shards", "n_slices", "deleted", "data", "checkpoints")
    missing = [k for k in need if k not in m]
    if missing:
        raise EraseError(f"{path} lacks {missing[0]!r}: the SISA folder is damaged")
    return m


def _check_file(folder: Path, rec: dict, what: str) -> Path:
    path = folder / rec["file"]
    if not path.is_file():
        raise EraseError(f"{folder} is incomplete: {what} {rec['file']} is missing")
    if _sha256(path) != rec["sha256"]:
        raise EraseError(f"{folder} is damaged: {what} {rec['file']} does not match its SHA-256 in the manifest")
    return path


def load_sisa(folder, executor=None):
    """Reopen a SISA folder; every file is checked against the manifest's SHA-256."""
    from safetensors.torch import load_file

    from erase.classifier.archs import Arch
    from erase.classifier.sisa import Assignment, SISAConfig, SISAModel

    folder = Path(folder)
    m = _read_manifest(folder)
    arch = Arch.from_dict(m["arch"])
    try:
        cfg = SISAConfig(**m["config"])
    except TypeError as e:
        raise EraseError(f"{folder / MANIFEST} has an unknown SISA option: {e}") from None
    data = load_file(str(_check_file(folder, m["data"], "data file")))
    for k in ("X", "y", "shard", "slice"):
        if k not in data:
            raise EraseError(f"{folder} is damaged: its data file has no {k!r}")
    n, S, R = int(m["n_train"]), int(m["n_shards"]), int(m["n_slices"])
    if len(data["y"]) != n:
        raise EraseError(f"{folder} is damaged: the data file holds {len(data['y'])} samples, the manifest says {n}")
    by_key = {}
    for c in m["checkpoints"]:
        by_key[(int(c["shard"]), int(c["slice"]))] = (c, _check_file(folder, c, "checkpoint"))
    absent = [(s, r) for s in range(S) for r in range(R) if (s, r) not in by_key]
    if absent:
        raise EraseError(f"{folder} is incomplete: no checkpoint for shard {absent[0][0]}, slice {absent[0][1]}")

    model = SISAModel(arch, cfg, int(m["seed"]), executor=executor)
    model.X, model.y = data["X"], data["y"]
    model.assignment = Assignment(data["shard"].numpy().astype(np.int64), data["slice"].numpy().astype(np.int64), S, R)
    model.alive = np.ones(n, dtype=bool)
    deleted = np.asarray(m["deleted"], dtype=np.int64)
    if deleted.size and (deleted.min() < 0 or deleted.max() >= n):
        raise EraseError(f"{folder} is damaged: a deleted id is out of range")
    model.alive[deleted] = False
    model.test = (data["X_test"], data["y_test"]) if "X_test" in data else None
    model.rows = data["rows"].numpy() if "rows" in data else None
    for (s, r), (c, path) in by_key.items():
        model.store.keys[(s, r)] = c["key"]
        model.store.files[(s, r)] = path
    model.models = [model._final_model(s, None) for s in range(S)]
    model.folder = folder
    model.manifest_sha256 = _sha256(folder / MANIFEST)
    model.samples_trained = 0
    return model
