#!/usr/bin/env python
"""Regenerate configs/<method>.yaml from the method dataclasses (defaults + help as comments).

tests/test_methods.py fails when a YAML file drifts from its dataclass; run this after changing one.
"""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from erase import methods  # noqa: E402


def main() -> int:
    for name in methods.available():
        spec = methods.get(name)
        lines = [f"# {spec.summary}",
                 f"# Paper defaults. On a toy-world model these presets are applied first: {dict(spec.toyworld)}",
                 f"method: {name}"]
        for field, default, help_text in methods.describe(name):
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{field}: {value}  # {help_text}")
        path = ROOT / "configs" / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
