"""Benchmark suites. Each suite is a module here with ``run(quick: bool = False) -> str`` that
measures something and returns a Markdown section (starting with a ``## `` heading).
``scripts/benchmark.py`` runs the chosen suites and replaces each suite's section in
``BENCHMARKS.md`` (between ``<!-- suite:NAME -->`` and ``<!-- /suite:NAME -->``), leaving the
other sections as they are.
"""

from __future__ import annotations

import importlib
import platform
import re
from pathlib import Path

SUITES = ("engine", "toyworld", "robustness", "classifier", "lora", "sisa", "parallel")


CACHED_SUITES = ("toyworld", "robustness")  # resumable suites whose tables can be written from their caches alone


def run_suite(name: str, quick: bool = False, compute: bool = True) -> str:
    """The suite's Markdown section. ``compute=False`` (cached suites only): write the tables from
    the cells already finished, computing nothing missing (the table names what is missing)."""
    from erase.errors import EraseError

    if name not in SUITES:
        raise EraseError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
    module = importlib.import_module(f"erase.benchmarks.{name}")
    if compute:
        return module.run(quick=quick)
    if name not in CACHED_SUITES:
        raise EraseError(f"suite {name!r} has no cache to write its tables from; --from-cache works for {', '.join(CACHED_SUITES)}")
    return module.run(quick=quick, compute=False)


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        import os

        dev = f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{dev}; torch {torch.__version__}; Python {platform.python_version()}"


def write_section(path: Path, name: str, markdown: str) -> None:
    """Replace (or append) the suite's section in the Markdown file, atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers written by `python scripts/benchmark.py`; each section says the machine that gave it.\n"
    block = f"<!-- suite:{name} -->\n{markdown.strip()}\n<!-- /suite:{name} -->"
    pattern = re.compile(rf"<!-- suite:{name} -->.*?<!-- /suite:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
