"""Putting a finished file or folder in place without ever leaving a half-written one."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def replace_path(tmp: str | Path, final: str | Path) -> Path:
    """Rename the complete ``tmp`` to ``final``, replacing what was there (moved aside first)."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        tmp.rename(final)
        _remove(old)
    else:
        tmp.rename(final)
    return final
