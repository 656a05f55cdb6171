#!/usr/bin/env python
"""Unlearn part of a classifier's training set and print the metrics table.

    python scripts/unlearn.py --method boundary-shrink --dataset digits --forget class:3
    python scripts/unlearn.py --method salun --dataset digits --forget random:0.1 --out runs/salun
    python scripts/unlearn.py --method pru --dataset diabetes --forget k:10
    python scripts/unlearn.py --method sisa --dataset digits --forget indices:ids.txt --seed 1

--forget: class:C | random:FRACTION | k:COUNT | indices:FILE (one training index per line).
--config: a YAML file of method options (see configs/classifier/); --set key=value overrides.
Writes metrics.json (and model.safetensors) to --out (default runs/unlearn/METHOD-DATASET).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.errors import EraseError  # noqa: E402


def load_overrides(config_file: str | None, sets: list[str]) -> dict:
    """Options from a YAML file, then --set key=value pairs (parsed as in scripts/erase.py)."""
    from erase.cli import parse_sets
    from erase.methods import read_yaml

    out = read_yaml(config_file) if config_file else {}
    out.update(parse_sets(sets))
    return out


def main(argv: list[str] | None = None) -> int:
    from erase.classifier import DATASETS, METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--forget", required=True, help="class:C | random:FRACTION | k:COUNT | indices:FILE")
    p.add_argument("--out", default=None, help="output folder (default runs/unlearn/METHOD-DATASET)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, forget set, models and method")
    p.add_argument("--config", default=None, help="YAML file of method options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one method option")
    p.add_argument("--deletion-probabilities", default=None, metavar="FILE",
                   help="SISA with --set sharding=distribution: one deletion probability per training sample")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    try:
        import torch

        from erase.classifier import get_method, make_config
        from erase.classifier.experiment import markdown_table, run_experiment, save_outputs

        torch.set_num_threads(max(1, args.threads))
        get_method(args.method)
        if args.dataset not in DATASETS:
            raise EraseError(f"unknown dataset {args.dataset!r}; choose from {', '.join(DATASETS)}")
        config = make_config(args.method, load_overrides(args.config, args.set))
        result = run_experiment(
            args.method, args.dataset, args.forget, seed=args.seed, config=config,
            deletion_probabilities=args.deletion_probabilities,
        )
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result.method} on {result.dataset}, forget {result.forget} ({result.n_forget} samples), seed {result.seed}\n")
    print(markdown_table(result.rows))
    if result.stats:
        print("\n" + json.dumps(result.stats, default=str))
    out = Path(args.out) if args.out else Path("runs") / "unlearn" / f"{args.method}-{args.dataset}"
    try:
        written = save_outputs(result, out)
    except OSError as e:
        print(f"error: cannot write the results to {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
