#!/usr/bin/env python
"""Erase concepts from a Stable Diffusion model: ``python scripts/erase.py --concept NAME --out DIR``.

All logic lives in erase.cli; see ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
