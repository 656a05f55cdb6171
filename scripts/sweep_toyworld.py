#!/usr/bin/env python
"""Sweep method settings on a toy-world model and score each erasure with the judge.

How the toy-world presets of each method (``register(..., toyworld=...)``) were chosen:

    python scripts/sweep_toyworld.py --methods salun --concepts star red striped \\
        --grid lr=1e-4,3e-4,1e-3 --grid epochs=2,4 --out sweep.jsonl

Each line of ``--out`` is one run: the settings, UA / IRA / CRA / distance and seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.cli import parse_value  # noqa: E402
from erase.errors import EraseError  # noqa: E402


def parse_grid(items: list[str] | None) -> dict[str, list]:
    grid = {}
    for item in items or []:
        if "=" not in item:
            raise EraseError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        grid[key] = [parse_value(v) for v in values.split(",")]
    return grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="toy-world model folder (default: the bundled one)")
    p.add_argument("--methods", nargs="+", default=["fmn", "salun"])
    p.add_argument("--concepts", nargs="+", default=["star", "red", "striped"])
    p.add_argument("--grid", action="append", help="key=v1,v2 (repeatable): settings to cross")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None, help="sampling steps for scoring (default: the model's)")
    p.add_argument("--max-retain", type=int, default=36, help="retained combinations scored (of 90 or 72)")
    p.add_argument("--out", default="sweep.jsonl")
    args = p.parse_args(argv)
    try:
        from erase import erase_concepts, load_pipeline
        from erase.toyworld.judge import load_judge
        from erase.toyworld.metrics import DEFAULT_STEPS, erasure_scores

        grid = parse_grid(args.grid)
        pipe = load_pipeline(args.model)
        if not pipe.erase_info.toyworld:
            raise EraseError(f"{args.model} is not a toy-world model (no toyworld.json)")
        judge = load_judge()
        score_kw = dict(seeds=args.seeds, steps=args.steps or DEFAULT_STEPS, judge=judge, max_retain=args.max_retain)
        base = {c: erasure_scores(pipe, c, **score_kw) for c in args.concepts}
        for c, s in base.items():
            print(f"base {c}: UA {s['UA']:.2f} IRA {s['IRA']:.2f} CRA {s['CRA']:.2f} dist {s['distance']:.2f}", flush=True)
        keys = list(grid)
        for method, concept, values in itertools.product(args.methods, args.concepts, itertools.product(*grid.values())):
            settings = dict(zip(keys, values))
            t = time.perf_counter()
            result = erase_concepts(pipe, [concept], method, settings, inplace=False)
            erase_s = time.perf_counter() - t
            with result.applied(pipe):
                s = erasure_scores(pipe, concept, **score_kw)
            row = {"method": method, "concept": concept, **settings, "UA": s["UA"], "IRA": s["IRA"], "CRA": s["CRA"],
                   "distance": s["distance"], "base_distance": base[concept]["distance"], "erase_seconds": erase_s}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
