#!/usr/bin/env python
"""Score an erasure and attack it: ``python scripts/evaluate.py --delta D --concept C [--attacks ti,prompt,relapse]``.

All logic lives in erase.robustness; see ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.robustness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
