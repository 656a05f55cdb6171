#!/usr/bin/env python
"""Unlearn part of a classifier's training set and print the metrics table (see erase/classifier/cli.py).

    python scripts/unlearn.py --method boundary-shrink --dataset digits --forget class:3
    python scripts/unlearn.py --method salun --dataset digits --forget random:0.1 --out runs/salun
    python scripts/unlearn.py --method pru --dataset diabetes --forget k:10
    python scripts/unlearn.py --method sisa --dataset digits --forget k:5 --save runs/sisa-digits
    python scripts/unlearn.py --sisa runs/sisa-digits --delete indices:ids.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.classifier.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
