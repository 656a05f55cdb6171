"""Server-side state of the app: one pipeline per model (shared, never left modified), one
``Session`` per browser tab (its own erasure result and cancel flag), one lock for the engine.

Every callback that runs a pipeline takes ``ENGINE_LOCK``; the erased weights are only ever
swapped in inside ``with result.applied(pipe):`` while that lock is held, so two tabs never see
each other's weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

BUNDLED = "bundled"

# The engine (training, sampling, weight swaps) runs one job at a time across all sessions.
ENGINE_LOCK = threading.RLock()


def default_work_root() -> Path:
    """Exports go under Gradio's file cache, so serving them does not copy (and hash) big files."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return Path(cache).resolve() / "erase-app"


def model_key(model: str | None, config: str | None = None) -> str:
    """Canonical cache key of what the user typed: '' / None / 'bundled' -> 'bundled'.

    ``config`` (a diffusers folder describing a single-file checkpoint) becomes part of the key.
    """
    text = (model or "").strip()
    if text.lower() in ("", BUNDLED, "toyworld", "bundled:toyworld"):
        return BUNDLED
    config = (config or "").strip()
    return f"{text}\n{config}" if config else text


def split_key(key: str) -> tuple[str | None, str | None]:
    """(model, config) for load_pipeline from a cache key."""
    if key == BUNDLED:
        return None, None
    model, _, config = key.partition("\n")
    return model, (config or None)


class ModelCache:
    """Pipelines loaded once per model and shared read-only by every session.

    At most ``max_models`` stay in memory (least recently used first out); a session whose model
    was dropped gets it reloaded on its next use.
    """

    def __init__(self, max_models: int = 2, loader: Callable | None = None):
        self.max_models = max(1, int(max_models))
        self._pipes: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loader = loader

    def _load(self, key: str):
        model, config = split_key(key)
        if self._loader is not None:
            return self._loader(model, config)
        from erase.models import load_pipeline

        return load_pipeline(model, config=config)

    def get(self, model: str | None, config: str | None = None):
        """The pipeline for ``model`` (a cache key or what the user typed), loading it if needed."""
        key = model if model is not None and "\n" in model else model_key(model, config)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            pipe = self._load(key)  # EraseError propagates; nothing is cached on failure
            self._pipes[key] = pipe
            while len(self._pipes) > self.max_models:
                self._pipes.popitem(last=False)
            return pipe

    def preload(self, model: str | None, config: str | None = None) -> threading.Thread:
        """Start loading ``model`` in the background (errors are logged; the page shows them on load)."""
        import logging

        def run():
            try:
                self.get(model, config)
            except Exception as e:  # noqa: BLE001 - reported again when a tab loads the model
                logging.getLogger("erase.app").warning("could not preload the model: %s", e)

        thread = threading.Thread(target=run, name="erase-preload", daemon=True)
        thread.start()
        return thread

    def loaded(self) -> list[str]:
        return list(self._pipes)

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()


class Session:
    """What one browser tab owns: the model it chose and its own erasure (a delta, not weights).

    A plain class (not a dataclass): Gradio serialises dataclass state values into its config.
    """

    def __init__(self):
        self.model: str | None = None  # cache key of the loaded model; None until one is loaded
        self.result = None  # erase.api.ErasureResult of the last finished erasure
        self.cancel = threading.Event()  # set by the Cancel button, checked in the progress callback
        self.workdir: Path | None = None  # exports of this session

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value for each new tab
        return Session()

    def folder(self, root: Path | None = None) -> Path:
        if self.workdir is None or not self.workdir.exists():
            base = root or default_work_root()
            base.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix="session-", dir=base))
        return self.workdir

    def close(self) -> None:
        """Drop the result and the exports (gr.State's delete callback, when the tab goes away)."""
        self.result = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def close_session(session: Session | None) -> None:
    if isinstance(session, Session):
        session.close()
