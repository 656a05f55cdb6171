"""Benchmark suite "toyworld": the bundled model's quality bar, then every engine method erasing
each of the world's 15 concepts (6 shapes, 6 colours, 3 styles), scored by the judge on all 108
prompts (UA / IRA / CRA / distance, and UA on held-out phrasings), with the time and peak
memory of each erasure. The recommended method is also run with a second erasure seed and
scored with a second scoring seed.

Resumable: every finished cell (method, concept, erasure seed, scoring seed) is appended to a
JSON-lines cache (``toyworld-cache/suite*.jsonl``) and skipped on the next run. A cell is keyed
by its method's settings and a hash of the method's source file, so changing a method reruns
its cells; delete the cache after changing code the methods share.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from erase.toyworld.concepts import COLOURS, SHAPES, STYLES

CONCEPTS = (*SHAPES, *COLOURS, *STYLES)
from erase.methods import RECOMMENDED  # noqa: E402  (the method the README recommends)
METHOD_ORDER = ("rece-adv", "rece", "uce", "salun", "esd", "fmn")  # the robust ones and the recommended (rece) first
BASE = "none (base model)"
CACHE_DIR = Path(__file__).resolve().parents[2] / "toyworld-cache"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


@contextmanager
def peak_rss():
    """Track this process's peak resident memory (bytes) while the block runs (Linux /proc)."""
    box = {"peak": 0}
    stop = threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def sample():
        while not stop.is_set():
            try:
                with open("/proc/self/statm") as f:
                    box["peak"] = max(box["peak"], int(f.read().split()[1]) * page)
            except OSError:
                return
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()


def _method_hash(method: str, config: dict) -> str:
    from erase import methods

    source = inspect.getsource(inspect.getmodule(methods.get(method).run))
    blob = json.dumps({"src": source, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_key(method: str, concept: str, erase_seed: int | None, score_seed: int, steps: int) -> str:
    """The cache key of a cell: the base model's, or a method's with its settings and source hash."""
    if method == BASE:
        return f"{BASE}|{concept}|-|{score_seed}|{steps}"
    import dataclasses

    from erase.methods import make_config

    conf = dataclasses.asdict(make_config(method, {"seed": erase_seed}, toyworld=True))
    return f"{method}|{concept}|{erase_seed}|{score_seed}|{steps}|{_method_hash(method, conf)}"


class Cells:
    """The JSON-lines cache of finished cells."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (several processes may fill one cache, each skipping the others' cells)."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict | None:
        if key not in self.rows:
            self.reload()
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        self.rows[row["key"]] = row


def settings(quick: bool) -> dict:
    from erase.toyworld.metrics import DEFAULT_STEPS

    return {"steps": 20 if quick else DEFAULT_STEPS, "heldout": 0 if quick else 12,
            "scoring_seeds": (0,), "extra_seeds": () if quick else (1,)}


def run_cells(methods: list[str] | None = None, concepts=CONCEPTS, quick: bool = False, log=print) -> Cells:
    """Compute every missing cell (base model first, then each method in ``METHOD_ORDER``)."""
    import torch

    from erase import erase_concepts, load_pipeline
    from erase.methods import available
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import world_scores

    cfg = settings(quick)
    cells = Cells(CACHE_DIR / ("suite-quick.jsonl" if quick else "suite.jsonl"))
    torch.manual_seed(0)
    pipe = load_pipeline(None)
    judge = load_judge()
    score = dict(steps=cfg["steps"], judge=judge, heldout=cfg["heldout"])
    order = [m for m in METHOD_ORDER if m in available()] + [m for m in available() if m not in METHOD_ORDER]
    for m in methods or order:
        if m not in available():
            from erase.errors import EraseError

            raise EraseError(f"unknown method {m!r}; choose from {', '.join(available())}")
    todo = methods or order

    for s in (*cfg["scoring_seeds"], *cfg["extra_seeds"]):
        keys = {c: cell_key(BASE, c, None, s, cfg["steps"]) for c in concepts}
        if all(cells.get(k) for k in keys.values()):
            continue
        log(f"[toyworld] base model, scoring seed {s}: all concepts")
        for c, row in world_scores(pipe, list(concepts), seed=s, **score).items():
            cells.add({"key": keys[c], "method": BASE, "erase_seed": None, "score_seed": s, **row, "erase_s": 0.0, "peak": 0})

    for method in todo:
        seeds = [(0, s) for s in cfg["scoring_seeds"]]
        if method == RECOMMENDED:
            seeds += [(e, s) for e in (0, *cfg["extra_seeds"]) for s in (*cfg["scoring_seeds"], *cfg["extra_seeds"]) if (e, s) not in seeds]
        for c in concepts:
            results = {}
            for e, s in seeds:
                key = cell_key(method, c, e, s, cfg["steps"])
                if cells.get(key):
                    continue
                if e not in results:
                    t = time.time()
                    with peak_rss() as mem:
                        results[e] = erase_concepts(pipe, [c], method=method, config={"seed": e}, inplace=False)
                    results[e].stats["peak"] = mem["peak"]
                    log(f"[toyworld] {method} erased {c!r} (seed {e}) in {time.time() - t:.1f} s")
                r = results[e]
                same = e > 0 and 0 in results and set(r.tensors) == set(results[0].tensors) and all(
                    torch.equal(r.tensors[k], results[0].tensors[k]) for k in r.tensors)
                twin = cells.get(cell_key(method, c, 0, s, cfg["steps"])) if same else None
                if twin is not None:  # bit-identical weights: identical images, so identical scores
                    row = {k: v for k, v in twin.items() if k not in ("key", "erase_seed", "erase_s", "peak", "same_as_seed0")}
                else:
                    with r.applied(pipe):
                        row = world_scores(pipe, [c], seed=s, **score)[c]
                log(f"[toyworld] {method} {c} e{e} s{s}: UA {_pct(row['UA'])} IRA {_pct(row['IRA'])} CRA {_pct(row['CRA'])}"
                    + (f" UA_heldout {_pct(row['UA_heldout'])}" if "UA_heldout" in row else ""))
                cells.add({"key": key, "method": method, "erase_seed": e, "score_seed": s, **row,
                           "erase_s": r.stats["seconds"], "peak": r.stats["peak"], "same_as_seed0": same})
    return cells


def _mean(rows, k):
    import numpy as np

    vals = [r[k] for r in rows if k in r]
    return float(np.mean(vals)) if vals else float("nan")


def render(cells: Cells, quick: bool = False, header: str = "") -> str:
    """The Markdown section from the cached cells (whatever has finished)."""
    from erase.methods import available

    cfg = settings(quick)
    # only cells of the current code and settings (a changed method's old cells stay in the file)
    rows = [r for r in cells.rows.values() if (r["method"] == BASE or r["method"] in available())
            and r["key"] == cell_key(r["method"], r["concept"], r["erase_seed"], r["score_seed"], cfg["steps"])]
    main = [r for r in rows if r["method"] == BASE and r["score_seed"] == 0 or r["method"] != BASE and r["erase_seed"] == 0 and r["score_seed"] == 0]
    methods = [BASE] + [m for m in METHOD_ORDER if any(r["method"] == m for r in main)]
    methods += sorted({r["method"] for r in main} - set(methods))
    lines = [header] if header else []
    lines += ["### By method and kind of concept (erasure seed 0, scoring seed 0; means over concepts)", "",
              "| method | kind | concepts | UA % | IRA % | CRA % | UA held-out % | distance | erase s (mean / max) | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for kind in ("shape", "colour", "style"):
            sel = [r for r in main if r["method"] == method and r["kind"] == kind]
            if not sel:
                continue
            peak = max(r["peak"] for r in sel)
            memory = f"{peak / 2**20:.0f} MiB" if peak else "–"
            secs = f"{_mean(sel, 'erase_s'):.1f} / {max(r['erase_s'] for r in sel):.1f}" if method != BASE else "–"
            held = _mean(sel, "UA_heldout")
            lines.append(f"| {method} | {kind} | {len(sel)} | {_pct(_mean(sel, 'UA'))} | {_pct(_mean(sel, 'IRA'))} | "
                         f"{_pct(_mean(sel, 'CRA'))} | {'–' if held != held else _pct(held)} | {_mean(sel, 'distance'):.1f} | {secs} | {memory} |")
    rec = [r for r in rows if r["method"] == RECOMMENDED]
    if rec and cfg["extra_seeds"]:
        lines += ["", f"### Recommended method ({RECOMMENDED}): every erasure seed × scoring seed", "",
                  "| kind | erasure seed | scoring seed | concepts | UA % | IRA % | CRA % | UA held-out % | base IRA % | base CRA % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for kind in ("shape", "colour", "style"):
            for e in sorted({r["erase_seed"] for r in rec}):
                for s in sorted({r["score_seed"] for r in rec}):
                    sel = [r for r in rec if r["kind"] == kind and r["erase_seed"] == e and r["score_seed"] == s]
                    base = [r for r in rows if r["method"] == BASE and r["kind"] == kind and r["score_seed"] == s]
                    if sel:
                        lines.append(f"| {kind} | {e} | {s} | {len(sel)} | {_pct(_mean(sel, 'UA'))} | {_pct(_mean(sel, 'IRA'))} | "
                                     f"{_pct(_mean(sel, 'CRA'))} | {_pct(_mean(sel, 'UA_heldout'))} | {_pct(_mean(base, 'IRA'))} | {_pct(_mean(base, 'CRA'))} |")
        same = [r["same_as_seed0"] for r in rec if r["erase_seed"] and "same_as_seed0" in r]
        if same:
            lines += ["", f"Erasure seed 1 gave weights bit-identical to seed 0 in {sum(same)} of {len(same)} cells"
                      f" ({RECOMMENDED} is deterministic: it neither samples data nor trains)." if all(same) else
                      f"Erasure seed 1 gave different weights from seed 0 in {len(same) - sum(same)} of {len(same)} cells."]
    lines += ["", "### Each concept (erasure seed 0, scoring seed 0)", "",
              "| concept | method | UA % | IRA % | CRA % | UA held-out % | distance | erase s | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in CONCEPTS:
        for m in methods:
            r = next((r for r in main if r["method"] == m and r["concept"] == c), None)
            if r is None:
                continue
            held = f"{_pct(r['UA_heldout'])}" if "UA_heldout" in r else "–"
            cost = ("– | –" if m == BASE else f"{r['erase_s']:.1f} | {r['peak'] / 2**20:.0f} MiB")
            lines.append(f"| {c} | {m} | {_pct(r['UA'])} | {_pct(r['IRA'])} | {_pct(r['CRA'])} | {held} | {r['distance']:.1f} | {cost} |")
    lines += ["", "UA: generations for the 18 (styles: 36) prompts naming the "
              "concept that the judge no longer assigns to it. IRA: the other concepts of the same kind still right; CRA: the "
              "other kinds still right (the 90 or 72 prompts not naming the concept). UA held-out: UA on "
              f"{cfg['heldout']} captions per concept phrased unlike any training prompt or template (other prefixes, sizes, "
              "word orders, a missing attribute; `erase.toyworld.metrics.heldout_prompts`). Distance: Fréchet distance of "
              "judge features between generations for prompts not naming the concept and renders of the same combinations "
              "(the base model's row is the floor). Methods run with their toy-world presets (`register(..., toyworld=...)` "
              "in erase/methods/); peak RSS is the whole process's resident memory during the erasure."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, compute: bool = True) -> str:
    import json as _json

    from erase.benchmarks import machine_description
    from erase.toyworld import weights_dir
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import DEFAULT_GUIDANCE, generation_accuracy

    cfg = settings(quick)
    cells = run_cells(quick=quick) if compute else Cells(CACHE_DIR / ("suite-quick.jsonl" if quick else "suite.jsonl"))
    step = _json.loads((weights_dir() / "toyworld.json").read_text()).get("step")
    judge = load_judge()
    from erase import load_pipeline

    acc = generation_accuracy(load_pipeline(None), seeds=(0,), steps=cfg["steps"], judge=judge)
    header = "\n".join([
        "## Toy world: bundled model and erasure scores", "",
        f"Machine: {machine_description()}. Command: `python scripts/benchmark.py --suite toyworld{' --quick' if quick else ''}` "
        f"(resumable: cells are cached in toyworld-cache/ and skipped, so a run after a change recomputes only what changed; "
        f"all cells take about an hour of this CPU). Bundled model: {step} training steps. "
        f"Sampling: DDIM {cfg['steps']} steps, guidance {DEFAULT_GUIDANCE}, all 108 shape × colour × style prompts per scoring "
        f"seed; judge held-out accuracy " + ", ".join(f"{k} {_pct(v)}%" for k, v in judge.info.get("heldout_accuracy", {}).items()) + ".",
        "",
        "Quality bar (judge accuracy on generations for all 108 prompts, scoring seed 0): "
        f"shape {_pct(acc['shape'])}%, colour {_pct(acc['colour'])}%, style {_pct(acc['style'])}%, all three {_pct(acc['all_three'])}%.",
        ""])
    return render(cells, quick, header)
