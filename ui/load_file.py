"""The erasure tab's "Load an erasure file" panel: an existing delta, partial UNet state dict (ESD's /
UCE's scripts) or LoRA (kohya or diffusers layout) put onto the current model.

    lf = LoadFileCallbacks(diffusion_callbacks)          # ui.diffusion.DiffusionCallbacks
    lf.load(session, "/tmp/upload/no-star.safetensors", "", ["star"])

The file becomes the session's erasure (``session.result``), exactly as a fresh one: the tab then
renders, compares, scores, draws heat maps, attacks and exports it the same way. The file is
read by ``erase.reload.load_erasure`` under ``ENGINE_LOCK``: names, shapes and the recorded base
model fingerprint are checked first, and the shared base pipeline's weights are never changed.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.diffusion import DiffusionCallbacks, parse_concepts, user_errors
from ui.state import ENGINE_LOCK, Session


def chosen_path(upload, path_text) -> str:
    """The uploaded file (a path, or Gradio's file object) or else the typed server-side path."""
    if upload:
        name = upload if isinstance(upload, str) else getattr(upload, "name", None) or getattr(upload, "path", None)
        if name:
            return str(name)
    text = str(path_text or "").strip().strip('"').strip("'")
    if not text:
        raise gr.Error("upload a .safetensors file or type its path", title="No file", print_exception=False)
    return str(Path(text).expanduser())


class LoadFileCallbacks:
    def __init__(self, diffusion: DiffusionCallbacks):
        self.diffusion = diffusion

    def load(self, session: Session, upload, path_text, concepts, progress=gr.Progress()):
        """-> status markdown, stats (dict); the session's erasure is the file's from now on."""
        from erase.reload import load_erasure

        pipe = self.diffusion.pipe_for(session)
        path = chosen_path(upload, path_text)
        progress(None, desc=f"reading {Path(path).name}")
        with user_errors("load the file"), ENGINE_LOCK:
            result = load_erasure(pipe, path, concepts=parse_concepts(concepts) or None)
            if not result.concepts:
                from erase.errors import EraseError

                raise EraseError(f"{Path(path).name} does not name the concepts it erases: type them in 'Concepts to forget' and load again")
        result.original = {}  # as after an erasure: the tab swaps the change in with result.applied(pipe)
        session.result = result
        s = result.stats
        kind = {"delta": "delta", "state-dict": "UNet state dict", "lora": "LoRA"}.get(s.get("file_kind"), "file")
        extra = ""
        if s.get("file_kind") == "lora":
            extra = f" (layout {s.get('lora_layout')}, rank {s.get('lora_rank') or '?'})"
            if s.get("lora_left_out"):
                extra += f"; {len(s['lora_left_out'])} changed biases/norms were not in it"
        status = (f"**Loaded** the {kind} `{Path(path).name}`{extra}: {result.method} erasing "
                  f"{', '.join(repr(c) for c in result.concepts)}, {s.get('changed_tensors', 0)} tensors, "
                  f"{s.get('changed_parameters', 0):,} weights. The base model is unchanged; this tab renders the file's "
                  "erasure by swapping it in, as after Erase.")
        stats = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items() if not hasattr(v, "shape")}
        return status, stats
