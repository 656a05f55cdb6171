#!/usr/bin/env python
"""Run benchmark suites and write their tables into BENCHMARKS.md.

    python scripts/benchmark.py                     # every suite but gpu
    python scripts/benchmark.py --suite classifier  # one suite
    python scripts/benchmark.py --quick             # fewer seeds/steps (smoke run)
    python scripts/benchmark.py --suite robustness --from-cache   # tables from the finished cells only
    python scripts/benchmark.py --suite gpu --json-dir runs/gpu-check          # CUDA: SD 1.5-shaped cases
    python scripts/benchmark.py --suite gpu --from-json runs/gpu-check/results.json  # table from a GPU run
    python scripts/benchmark.py --suite gpu --gpu-pipeline tiny --print-only   # CPU smoke run of the gpu suite

The gpu suite (erase/benchmarks/gpu.py) runs every registered method with its paper defaults,
bounded work and a timeout per case; it writes DIR/results.json after every case and
DIR/results.md at the end. scripts/gpu_check.sh wraps it for the device machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.benchmarks import SUITES, run_suite, write_section  # noqa: E402
from erase.errors import EraseError  # noqa: E402

ALL_SUITES = (*SUITES, "gpu")  # gpu only when asked for: it needs CUDA (or --gpu-pipeline tiny)


def gpu_section(args) -> tuple[str, str]:
    """(the tables to print, the section for the Markdown file: the tables and the raw JSON)."""
    from erase.benchmarks import gpu

    if args.from_json:
        path = Path(args.from_json)
        if not path.is_file():
            raise EraseError(f"no such results file: {path}")
        results = json.loads(path.read_text())
        return gpu.markdown(results, raw=False), gpu.markdown(results)
    cases = [c for part in (args.cases or []) for c in part.split(",") if c]
    results = gpu.run_gpu(args.json_dir, pipeline=args.gpu_pipeline, cases=cases or None, case_timeout=args.case_timeout,
                          budget=args.budget, smoke=not args.no_smoke, frozen=args.frozen)
    md = gpu.markdown(results)
    (Path(args.json_dir) / "results.md").write_text(md + "\n")
    return gpu.markdown(results, raw=False), md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=ALL_SUITES, help="suite to run (repeatable; default: all but gpu)")
    p.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"), help="Markdown file to update")
    p.add_argument("--print-only", action="store_true", help="print the tables, do not write the file")
    p.add_argument("--from-cache", action="store_true",
                   help="toyworld/robustness: write the tables from the cells finished so far, computing nothing (missing cells are named)")
    g = p.add_argument_group("gpu suite")
    g.add_argument("--json-dir", default="runs/gpu-check", help="folder for results.json (rewritten after every case) and results.md")
    g.add_argument("--gpu-pipeline", default="sd15", choices=("sd15", "tiny"), help="sd15 (CUDA) or tiny (a smoke run, CPU too)")
    g.add_argument("--cases", action="append", help="only these cases, e.g. fmn/full,salun (repeatable)")
    g.add_argument("--case-timeout", type=float, default=150.0, help="seconds per case (default 150)")
    g.add_argument("--budget", type=float, default=420.0, help="seconds for the whole suite; later cases are skipped (default 420)")
    g.add_argument("--frozen", default="auto", choices=("auto", "half", "fp32"),
                   help="VAE/text encoder precision: half (as load_pipeline on a GPU), fp32, or auto (half, fp32 after a dtype clash)")
    g.add_argument("--no-smoke", action="store_true", help="skip the tiny-pipeline smoke cases")
    g.add_argument("--from-json", help="render the gpu section from an earlier results.json instead of running")
    args = p.parse_args(argv)
    try:
        for name in args.suite or SUITES:
            shown = md = None
            if name == "gpu":
                shown, md = gpu_section(args)
            else:
                shown = md = run_suite(name, quick=args.quick, compute=not args.from_cache)
            print(shown)
            if not args.print_only:
                write_section(Path(args.out), name, md)
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
