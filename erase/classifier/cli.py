"""``scripts/unlearn.py``: unlearn part of a classifier's training set, or delete from a saved SISA model.

Two modes:

- an experiment: ``--method M --dataset NAME | --data DIR|file.npz --forget SPEC`` trains the
  original model (``--arch``, default mlp) or loads ``--model weights.safetensors``, unlearns,
  retrains from scratch as the reference and prints the metrics; ``--out`` gets ``metrics.json``
  and ``model.safetensors`` (one folder, renamed into place when complete); with
  ``--method sisa``, ``--save DIR`` keeps the SISA model as a folder that later deletions reopen;
- a deletion: ``--sisa DIR --delete SPEC`` reopens a saved SISA model, deletes, and saves it
  back atomically (a crash leaves the previous state).

Bad input is a one-line ``error: ...`` and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from erase.errors import EraseError

USAGE = """examples:
  unlearn.py --method boundary-shrink --dataset digits --forget class:3
  unlearn.py --method salun --dataset digits --forget random:0.1 --out runs/salun
  unlearn.py --method pru --dataset diabetes --forget k:10
  unlearn.py --method sisa --dataset digits --forget k:5 --save runs/sisa-digits
  unlearn.py --sisa runs/sisa-digits --delete indices:ids.txt
  unlearn.py --data mine.npz --method salun --forget class:7            # trains an MLP on mine.npz first
  unlearn.py --data images/ --model resnet.safetensors --arch resnet18 --method boundary-shrink --forget class:2
  unlearn.py --data mine.npz --model net.safetensors --arch mypkg.nets:build --arch-kwargs '{"n_classes": 5}' ...

--data: an .npz with arrays X, y (optionally X_test, y_test; else a seeded 20 % is held out) or an
image folder (ImageFolder layout DIR/<class>/<image>, or DIR/train + DIR/test); forget indices are
rows of X as given.

--forget / --delete: class:C | random:FRACTION | k:COUNT | indices:FILE (one training index per line).
--config: a YAML file of method options (see configs/classifier/); --set key=value overrides.
"""


def build_parser() -> argparse.ArgumentParser:
    from erase.classifier import METHODS
    from erase.classifier.data import ALL_DATASETS as DATASETS

    p = argparse.ArgumentParser(prog="unlearn.py", description="Unlearn part of a classifier's training set, "
                                "or delete from a saved SISA model.", epilog=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--dataset", help=f"a built-in dataset: {', '.join(DATASETS)}")
    p.add_argument("--data", default=None, metavar="DIR|FILE.npz", help="your data: an .npz (X, y[, X_test, y_test]) or an image folder")
    p.add_argument("--model", default=None, metavar="FILE", help="your trained classifier (safetensors); default: train one on the data")
    p.add_argument("--arch", default=None, help="resnet18 | mlp | package.module:callable (the model's architecture)")
    p.add_argument("--arch-kwargs", default=None, metavar="JSON", help="keyword arguments of --arch, as a JSON object")
    p.add_argument("--head", default=None, help="dotted name of the classification head (default: found automatically)")
    p.add_argument("--image-size", type=int, default=None, help="resize the images of --data DIR to this square size")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="training recipe of the original and retrained model (epochs, lr, batch_size, weight_decay)")
    p.add_argument("--backdoor", action="store_true", help="plant a trigger in half of the forget set before training; report its ASR")
    p.add_argument("--mia", default="svc", choices=("svc", "all"), help="svc: the confidence SVC; all: + the threshold attacks")
    p.add_argument("--forget", help="class:C | random:FRACTION | k:COUNT | indices:FILE")
    p.add_argument("--out", default=None, help="output folder (default runs/unlearn/METHOD-DATASET)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, forget set, models and method")
    p.add_argument("--config", default=None, help="YAML file of method options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one method option")
    p.add_argument("--deletion-probabilities", default=None, metavar="FILE",
                   help="SISA with --set sharding=distribution: one deletion probability per training sample")
    p.add_argument("--save", default=None, metavar="DIR", help="--method sisa: keep the SISA model in DIR (reopen with --sisa)")
    p.add_argument("--sisa", default=None, metavar="DIR", help="a SISA folder written by --save: delete from it (with --delete)")
    p.add_argument("--delete", default=None, metavar="SPEC", help="with --sisa: indices:FILE or class:C")
    p.add_argument("--overwrite", action="store_true", help="let --save replace an existing SISA folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p


def _check_args(args) -> None:
    from erase.classifier import get_method
    from erase.classifier.data import ALL_DATASETS as DATASETS

    if args.sisa is not None:
        extra = [f"--{k}" for k in ("method", "dataset", "forget", "save") if getattr(args, k) is not None]
        if extra:
            raise EraseError(f"--sisa DIR deletes from a saved SISA model; {extra[0]} does not apply (use --delete SPEC)")
        if not args.delete:
            raise EraseError("--sisa DIR needs --delete SPEC (indices:FILE or class:C)")
        if args.delete.partition(":")[0].strip().lower() not in ("indices", "class"):
            raise EraseError(f"--delete takes indices:FILE or class:C (a deletion names its samples), got {args.delete!r}")
        return
    if args.delete is not None:
        raise EraseError("--delete needs --sisa DIR (a folder written by --method sisa --save DIR)")
    if not args.method:
        raise EraseError("give --method (or --sisa DIR --delete SPEC)")
    spec = get_method(args.method)
    if bool(args.dataset) == bool(args.data):
        raise EraseError("give one of --dataset NAME (built-in) or --data DIR|FILE.npz (yours)")
    if args.dataset and args.dataset not in DATASETS:
        raise EraseError(f"unknown dataset {args.dataset!r}; choose from {', '.join(DATASETS)}")
    if args.data and not Path(args.data).exists():
        raise EraseError(f"data not found: {args.data}")
    if args.model and not Path(args.model).is_file():
        raise EraseError(f"model file not found: {args.model}")
    if args.arch_kwargs and not args.arch:
        raise EraseError("--arch-kwargs needs --arch")
    if spec.model_kind == "linear" and (args.model or args.arch or args.head or args.backdoor):
        raise EraseError("pru fits its own linear model: --model, --arch, --head and --backdoor do not apply")
    if args.backdoor and args.model:
        raise EraseError("--backdoor trains the original model on poisoned data; it cannot use --model")
    if args.save is not None:
        if spec.model_kind != "sisa":
            raise EraseError(f"--save keeps a SISA model; {args.method} has none (its model goes to --out)")
        _check_save_target(Path(args.save), args.overwrite)
    if not args.forget and not (spec.model_kind == "sisa" and args.save):
        raise EraseError("give --forget SPEC (class:C, random:FRACTION, k:COUNT or indices:FILE)")


def _arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise EraseError(f"--arch-kwargs is not valid JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise EraseError(f"--arch-kwargs must be a JSON object, got {text!r}")
    return value


def _train_config(pairs: list[str]):
    import dataclasses

    from erase.cli import parse_sets
    from erase.classifier.models import TrainConfig

    values = parse_sets(pairs)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = [k for k in values if k not in names]
    if bad:
        raise EraseError(f"unknown training option {bad[0]!r}; options: {', '.join(sorted(names))}")
    return TrainConfig(**values) if values else None


def _check_save_target(folder: Path, overwrite: bool) -> None:
    from erase.classifier.sisa_store import MANIFEST

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not (folder / MANIFEST).exists():
            raise EraseError(f"{folder} exists and is not a SISA folder; refusing to write into it")
        if not overwrite:
            raise EraseError(f"{folder} already holds a SISA model; pass --overwrite to replace it")


def _delete_from_sisa(args) -> int:
    from erase.classifier.sisa_store import locked

    with locked(args.sisa):
        return _delete_locked(args)


def _delete_locked(args) -> int:
    import numpy as np

    from erase.classifier.data import Dataset, parse_forget
    from erase.classifier.sisa import SISAModel

    model = SISAModel.load(args.sisa)
    X_test, y_test = model.test if model.test is not None else (model.X[:0], model.y[:0])
    y = model.y.numpy()
    view = Dataset("sisa", "classification", model.X.numpy(), y, X_test.numpy(), y_test.numpy(),
                   n_classes=int(y.max()) + 1 if (y >= 0).any() else 1, rows=model.rows)  # indices name the user's rows
    forget = parse_forget(args.delete, view, args.seed)  # class:C only finds live samples (deleted labels are -1)

    def ta():
        return 100.0 * float((model.predict(X_test) == y_test.numpy()).mean()) if len(y_test) else float("nan")

    before = ta()
    stats = model.delete(forget.indices)
    after = ta()
    model.save(args.sisa)
    print(f"deleted {stats['deleted']} samples from {args.sisa}: shards retrained {stats['shards_retrained']}, "
          f"samples retrained {stats['samples_retrained']} / {stats['full_retrain_samples']} of a full SISA retrain, "
          f"{stats['seconds']:.2f} s")
    if not np.isnan(before):
        print(f"test accuracy {before:.2f} % -> {after:.2f} %")
    print(f"{int((~model.alive).sum())} samples deleted in all; saved {args.sisa}")
    return 0


def _load_data(args):
    from erase.classifier.api import forget_rows
    from erase.classifier.data import load_dataset
    from erase.classifier.sources import as_dataset

    if args.dataset:
        return load_dataset(args.dataset, args.seed)
    return as_dataset(Path(args.data), seed=args.seed, image_size=args.image_size, keep=forget_rows(args.forget))


def _setup(args):
    """(data, arch, original model) from the arguments: the same for every method."""
    from erase.classifier.archs import arch_for_data
    from erase.classifier.models import find_head, load_model

    data = _load_data(args)
    original, arch = None, None
    kwargs = _arch_kwargs(args.arch_kwargs)
    if args.model:
        original = load_model(args.model, args.arch, kwargs)
        arch = original.erase_arch
        if data.is_classification:
            find_head(original, data.X_train[:2], args.head, n_classes=int(data.n_classes))
    elif args.arch and data.is_classification:
        arch = arch_for_data(args.arch, data.X_train.shape[1:], int(data.n_classes), **kwargs)
        find_head(arch(), data.X_train[:2], args.head, n_classes=int(data.n_classes))  # fails before any training
    return data, arch, original


def _run_experiment(args) -> int:
    from erase.classifier import get_method, make_config
    from erase.classifier.experiment import fit_sisa_only, markdown_table, run_experiment, save_outputs
    from erase.cli import read_settings

    spec = get_method(args.method)
    config = make_config(args.method, read_settings(args.config, args.set))  # YAML, then --set pairs
    train = _train_config(args.train)
    data, arch, original = _setup(args)
    if spec.model_kind == "sisa" and args.save and not args.forget:
        sisa, data, line = fit_sisa_only(data, args.seed, config, args.deletion_probabilities, arch=arch)
        sisa.rows = data.rows
        sisa.save(args.save, data.X_test, data.y_test, overwrite=args.overwrite)
        print(line + f"\nsaved {args.save}")
        return 0
    result = run_experiment(args.method, data, args.forget, seed=args.seed, config=config,
                            deletion_probabilities=args.deletion_probabilities, arch=arch, original=original,
                            head=args.head, train=train, backdoor=True if args.backdoor else None, mia=args.mia)
    print(f"{result.method} on {result.dataset}, forget {result.forget} ({result.n_forget} samples), seed {result.seed}\n")
    print(markdown_table(result.rows))
    if result.stats:
        print("\n" + json.dumps(result.stats, default=str))
    if args.save:
        result.models["sisa"].rows = data.rows
        result.models["sisa"].save(args.save, data.X_test, data.y_test, overwrite=args.overwrite)
        print(f"saved the SISA model (after this deletion) to {args.save}")
    name = args.dataset or Path(args.data).stem
    out = Path(args.out) if args.out else Path("runs") / "unlearn" / f"{args.method}-{name}"
    try:
        written = save_outputs(result, out)
    except OSError as e:
        raise EraseError(f"cannot write the results to {out}: {e.strerror or e}") from None
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
        _check_args(args)
        return _delete_from_sisa(args) if args.sisa else _run_experiment(args)
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
