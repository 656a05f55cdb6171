#!/usr/bin/env python
"""Run benchmark suites and write their tables into BENCHMARKS.md.

    python scripts/benchmark.py                     # every suite
    python scripts/benchmark.py --suite classifier  # one suite
    python scripts/benchmark.py --quick             # fewer seeds/steps (smoke run)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.benchmarks import SUITES, run_suite, write_section  # noqa: E402
from erase.errors import EraseError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=SUITES, help="suite to run (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"), help="Markdown file to update")
    p.add_argument("--print-only", action="store_true", help="print the tables, do not write the file")
    args = p.parse_args(argv)
    try:
        for name in args.suite or SUITES:
            md = run_suite(name, quick=args.quick)
            print(md)
            if not args.print_only:
                write_section(Path(args.out), name, md)
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
