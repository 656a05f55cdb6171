"""Callbacks of the concept-erasure tab: plain functions over the engine's public API.

Each takes the tab's ``Session`` and widget values and returns widget values; bad input raises
``gr.Error`` with the engine's ``EraseError`` message. Nothing here changes a pipeline's weights
except through ``result.applied(pipe)`` (and the engine's ``erase_concepts(..., inplace=False)``),
always under ``ENGINE_LOCK``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from erase.models import is_toyworld
from ui.settings import Setting, config_values, defaults_for
from ui.state import BUNDLED, ENGINE_LOCK, ModelCache, Session, model_key

log = logging.getLogger("erase.app")

# The judge scores every shape x colour x style prompt (108 images per seed) for each model: one
# seed keeps that to a few minutes on a CPU; the original model's scores are computed once.
JUDGE_SEEDS = (0,)
METRIC_COLUMNS = ["model", "concept", "kind", "UA %", "IRA %", "CRA %", "distance", "seconds"]


@contextmanager
def user_errors(action: str):
    """EraseError (bad input) -> gr.Error with its message; anything else -> gr.Error + log."""
    from erase.errors import EraseError
    from erase.training import Cancelled

    try:
        yield
    except (gr.Error, Cancelled):
        raise
    except EraseError as e:
        raise gr.Error(str(e), title=f"Could not {action}", print_exception=False) from None
    except Exception as e:  # a bug: keep the server up, say what happened, keep the trace in the log
        log.exception("%s failed", action)
        raise gr.Error(f"{type(e).__name__}: {e}", title=f"Could not {action} (unexpected error)") from None


def parse_concepts(value) -> list[str]:
    """Dropdown value (list) or text -> concepts; commas and new lines separate concepts."""
    items = [value] if isinstance(value, str) else list(value or [])
    out = []
    for item in items:
        for part in str(item).replace("\n", ",").split(","):
            if part.strip():
                out.append(part.strip())
    return out


def parse_seeds(text) -> list[int]:
    if isinstance(text, (int, float)):
        return [int(text)]
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise gr.Error(f"seeds must be whole numbers separated by commas, got {text!r}", title="Bad seeds", print_exception=False) from None
    if not seeds:
        raise gr.Error("give at least one seed (e.g. 0, 1)", title="Bad seeds", print_exception=False)
    return seeds


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip ``folder``'s contents; weights are stored as they are (they hardly compress)."""
    import zipfile

    tmp = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                kind = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                z.write(path, path.relative_to(folder).as_posix(), compress_type=kind)
    tmp.replace(archive)
    return archive


def known_concepts(pipe) -> list[str]:
    """The concepts a toy-world model knows (suggested in the concept box); none for other models."""
    from erase.toyworld.concepts import all_concepts

    return list(all_concepts()) if is_toyworld(pipe) else []


class DiffusionCallbacks:
    def __init__(self, cache: ModelCache, settings: list[Setting], work_root: Path | None = None,
                 judge_seeds=JUDGE_SEEDS, judge_steps: int | None = None):
        self.cache = cache
        self.settings = settings
        self.work_root = work_root
        self.judge_kw = {"seeds": tuple(judge_seeds)} | ({"steps": int(judge_steps)} if judge_steps else {})
        self._original_scores: dict[tuple, dict] = {}  # (model, concept) -> scores; the base never changes
        self._scores_lock = threading.Lock()

    # ---- model -------------------------------------------------------------------------
    def pipe_for(self, session: Session):
        if session.model is None:
            raise gr.Error("load a model first", title="No model", print_exception=False)
        with user_errors("load the model"):
            return self.cache.get(session.model)

    def load_model(self, model_text: str, session: Session, config_text: str = "", progress=gr.Progress(track_tqdm=True)):
        """-> status, concept choices, sampling steps, guidance, *settings (the model's defaults).

        ``config_text``: for a single-file checkpoint, a diffusers folder (or Hub id) with its configs.
        """
        from erase.evaluation import sampling_defaults

        key = model_key(model_text, config_text)
        progress(0, desc=f"loading {'the bundled toy-world model' if key == BUNDLED else model_text.strip()} ...")
        t0 = time.perf_counter()
        with user_errors("load the model"):
            pipe = self.cache.get(key)
            defaults = defaults_for(pipe, self.settings)
        if session.model != key:
            session.result = None  # a delta belongs to the model it was made on
        session.model = key
        progress(1, desc="loaded")
        info = pipe.erase_info
        device = next(pipe.unet.parameters()).device
        n_params = sum(p.numel() for p in pipe.unet.parameters())
        status = (f"**Model:** `{info.source}` ({info.kind}, {info.family}) on {device.type}, "
                  f"UNet {n_params / 1e6:.1f} M parameters, ready in {time.perf_counter() - t0:.1f} s.")
        if is_toyworld(pipe):
            status += " A toy-world model: its concepts are suggested and the settings show the measured toy-world presets."
        concepts = known_concepts(pipe)
        sd = sampling_defaults(pipe)
        return (status, gr.update(choices=concepts, value=[]), sd["steps"], sd["guidance_scale"], *defaults)

    # ---- erase -------------------------------------------------------------------------
    def erase(self, session: Session, concepts, method: str, *values, progress=gr.Progress()):
        """-> status markdown, stats (dict)."""
        from erase.api import erase_concepts
        from erase.training import Cancelled

        pipe = self.pipe_for(session)
        names = parse_concepts(concepts)
        config = config_values(method, self.settings, list(values))
        session.cancel.clear()
        progress(0, desc="starting")

        def report(done, total, info):
            if session.cancel.is_set():
                raise Cancelled()
            phase = info.get("phase", "")
            loss = f" (loss {info['loss']:.4g})" if "loss" in info else ""
            progress((done, total), desc=f"{phase}{loss}", unit="steps")

        try:
            with user_errors("erase"), ENGINE_LOCK:
                if not names:
                    from erase.errors import EraseError

                    raise EraseError("no concept given to erase: type one (e.g. a word the prompts contain)")
                result = erase_concepts(pipe, names, method, config, progress=report, inplace=False)
        except Cancelled:
            raise gr.Error("Erasure cancelled: the model is unchanged.", title="Cancelled", print_exception=False) from None
        # The app swaps the change in with result.applied(pipe), which saves the current weights
        # itself: the copy of the base values is never used here, and it is as large as the change.
        result.original = {}
        session.result = result
        s = result.stats
        loss = f", loss {s['loss_first']:.4g} → {s['loss_last']:.4g}" if "loss_first" in s and "loss_last" in s else ""
        status = (f"**Erased** {', '.join(repr(c) for c in result.concepts)} with **{result.method}** in "
                  f"{s.get('seconds', 0):.1f} s: {s.get('changed_tensors', 0)} tensors, "
                  f"{s.get('changed_parameters', 0):,} weights changed{loss}. The base model is unchanged; "
                  "this tab renders the erased one by swapping the change in.")
        stats = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items() if not hasattr(v, "shape")}
        return status, stats

    def cancel(self, session: Session):
        session.cancel.set()
        return "Cancelling … (the run stops at its next step and the model is restored)"

    # ---- compare -----------------------------------------------------------------------
    def _result(self, session: Session):
        if session.result is None:
            raise gr.Error("erase a concept first", title="Nothing to compare", print_exception=False)
        return session.result

    def comparison_prompts(self, pipe, result, n_prompts: int) -> tuple[list[str], list[str]]:
        from erase.prompts import prompt_source_for

        n = max(1, int(n_prompts or 1))
        source = prompt_source_for(pipe, result.config.get("templates"))
        concept = []
        for c in result.concepts:
            concept += spread(source.concept_prompts(c), n)
        kept = spread(source.retain_prompts(result.concepts), n)
        return concept, kept

    def compare(self, session: Session, n_prompts, seeds_text, steps, guidance, progress=gr.Progress()):
        """-> concept (original, erased) and kept (original, erased) galleries, and the first pair for the slider."""
        from erase.evaluation import generate

        pipe = self.pipe_for(session)
        result = self._result(session)
        seeds = parse_seeds(seeds_text)
        steps = int(steps) if steps else None
        guidance = None if guidance is None else float(guidance)
        session.cancel.clear()
        with user_errors("compare"):
            concept_prompts, kept_prompts = self.comparison_prompts(pipe, result, n_prompts)
            jobs = [(p, s, "concept") for p in concept_prompts for s in seeds] + [(p, s, "kept") for p in kept_prompts for s in seeds]
            chunk, total = 4, 2 * len(jobs)

            def render(label: str, offset: int) -> list:
                images = []
                for i in range(0, len(jobs), chunk):
                    if session.cancel.is_set():
                        raise gr.Error("Rendering cancelled.", title="Cancelled", print_exception=False)
                    progress((offset + i, total), desc=f"rendering the {label} model", unit="images")
                    part = jobs[i : i + chunk]
                    images += generate(pipe, [j[0] for j in part], [j[1] for j in part], steps=steps, guidance_scale=guidance)
                return images

            with ENGINE_LOCK:
                before = render("original", 0)
                with result.applied(pipe):  # one swap in and out for all the erased images
                    after = render("erased", len(jobs))
        galleries = {}
        for group in ("concept", "kept"):
            idx = [i for i, j in enumerate(jobs) if j[2] == group]
            galleries[group] = ([(before[i], f"{jobs[i][0]} · seed {jobs[i][1]}") for i in idx],
                                [(after[i], f"{jobs[i][0]} · seed {jobs[i][1]}") for i in idx])
        slider = (before[0], after[0]) if before else None
        return (*galleries["concept"], *galleries["kept"], slider)

    def scores(self, session: Session, score: bool, progress=gr.Progress()):
        """-> judge score rows (original and erased model) and a note; bundled model only."""
        pipe = self.pipe_for(session)
        result = self._result(session)
        with user_errors("score the erasure"):
            return self.metrics(pipe, result, score, progress, model=session.model)

    def score_now(self, session: Session, progress=gr.Progress()):
        return self.scores(session, True, progress)

    def metrics(self, pipe, result, score: bool, progress=gr.Progress(), model: str | None = None):
        """Judge scores (UA/IRA/CRA) of the original and the erased model, bundled model only."""
        if not is_toyworld(pipe):
            return [], "Judge scores (UA/IRA/CRA) exist for the bundled toy-world model (and models exported from it) only."
        if not score:
            return [], "Judge scores skipped (tick 'Score with the judge' or press 'Score now')."
        from erase.errors import EraseError
        from erase.toyworld.metrics import erasure_scores

        rows, notes = [], []
        with ENGINE_LOCK:
            for c in result.concepts:
                for label, ctx in (("original", None), ("erased", result)):
                    progress(None, desc=f"judging the {label} model on '{c}' (every prompt of the world)")
                    try:
                        if ctx is None:
                            key = (model or id(pipe), c.strip().lower())
                            with self._scores_lock:
                                if key not in self._original_scores:
                                    self._original_scores[key] = erasure_scores(pipe, c, **self.judge_kw)
                                s = self._original_scores[key]
                        else:
                            with ctx.applied(pipe):
                                s = erasure_scores(pipe, c, **self.judge_kw)
                            # the exports' model cards report them
                            result.scores = {**(getattr(result, "scores", None) or {}), c: {k: s[k] for k in ("UA", "IRA", "CRA") if k in s}}
                    except EraseError as e:
                        notes.append(f"'{c}': {e}")
                        break
                    shares = [round(100 * float(s[k]), 1) if k in s else None for k in ("UA", "IRA", "CRA")]
                    rest = [round(float(s[k]), 2) if k in s else None for k in ("distance", "seconds")]
                    rows.append([label, s.get("concept", c), s.get("kind", ""), *shares, *rest])
        note = ("UA: share of the concept's images the judge no longer recognises (higher = more forgotten); "
                "IRA / CRA: judge accuracy on other concepts of the same / other kinds (higher = more kept); "
                "distance: Fréchet distance of the judge's features to renders of the same prompts (lower = closer). "
                f"Every prompt of the world, seeds {', '.join(map(str, self.judge_kw['seeds']))}.")
        if notes:
            note += " " + " ".join(notes)
        return rows, note

    # ---- heat maps ---------------------------------------------------------------------
    def heatmaps(self, session: Session, seeds_text, steps, progress=gr.Progress()):
        """-> gallery: per concept, original image + its attention, erased image + its attention."""
        from erase.errors import EraseError
        from erase.evaluation import attention_heatmap, overlay_heatmap
        from erase.prompts import prompt_source_for

        pipe = self.pipe_for(session)
        result = self._result(session)
        seed = parse_seeds(seeds_text)[0]
        steps = int(steps) if steps else None
        items = []
        with user_errors("draw the heat maps"), ENGINE_LOCK:
            source = prompt_source_for(pipe, result.config.get("templates"))
            session.cancel.clear()
            for c in result.concepts:
                if session.cancel.is_set():
                    raise gr.Error("Heat maps cancelled.", title="Cancelled", print_exception=False)
                progress(None, desc=f"cross-attention of '{c}'")
                maps = None
                for prompt in source.concept_prompts(c)[:8]:
                    try:
                        img0, heat0 = attention_heatmap(pipe, prompt, c, seed, steps=steps)
                        img1, heat1 = attention_heatmap(pipe, prompt, c, seed, steps=steps, result=result)
                    except EraseError:
                        continue  # the concept is not placeable in this prompt: try the next
                    maps = (prompt, img0, heat0, img1, heat1)
                    break
                if maps is None:
                    raise EraseError(f"no prompt places the concept {c!r} in the tokenizer: cannot draw its attention")
                prompt, img0, heat0, img1, heat1 = maps
                vmax = float(max(heat0.max(), heat1.max()))  # one scale for before and after
                items += [
                    (img0, f"original · {prompt}"),
                    (overlay_heatmap(img0, heat0, vmax), f"original · attention to '{c}' (max {heat0.max():.3f})"),
                    (img1, f"erased · {prompt}"),
                    (overlay_heatmap(img1, heat1, vmax), f"erased · attention to '{c}' (max {heat1.max():.3f})"),
                ]
        return items

    # ---- export ------------------------------------------------------------------------
    def export_delta(self, session: Session):
        from erase.export import export_delta

        pipe = self.pipe_for(session)
        result = self._result(session)
        with user_errors("export the delta"):
            name = "erase-" + "-".join("".join(ch if ch.isalnum() else "_" for ch in c) for c in result.concepts)[:60]
            path = session.folder(self.work_root) / f"{name}-{result.method}.safetensors"
            with ENGINE_LOCK:
                export_delta(result, path, overwrite=True, base=pipe)  # records the base model's fingerprint
        return str(path)

    def export_lora(self, session: Session, rank, progress=gr.Progress()):
        """-> the LoRA folder's files: kohya layout (A1111, ComfyUI), diffusers layout, model card."""
        from erase.lora import DEFAULT_RANK, export_lora_folder

        pipe = self.pipe_for(session)
        result = self._result(session)
        progress(None, desc="factorising the change")
        with user_errors("export the LoRA"):
            folder = session.folder(self.work_root) / f"lora-{result.method}"
            with ENGINE_LOCK:
                info = export_lora_folder(result, folder, str(rank).strip() if str(rank or "").strip() else DEFAULT_RANK,
                                          base=pipe, overwrite=True)
        return [str(folder / info["files"]["kohya"]), str(folder / info["files"]["diffusers"]), str(folder / "README.md")]

    def export_folder(self, session: Session, progress=gr.Progress()):
        from erase.export import export_diffusers

        pipe = self.pipe_for(session)
        result = self._result(session)
        progress(None, desc="writing the diffusers folder")
        with user_errors("export the model"):
            base = session.folder(self.work_root)
            folder = base / f"erased-{result.method}"
            with ENGINE_LOCK:
                export_diffusers(pipe, result, folder, overwrite=True)
            progress(None, desc="zipping")
            archive = zip_folder(folder, base / f"{folder.name}.zip")
            shutil.rmtree(folder, ignore_errors=True)
        return str(archive)
