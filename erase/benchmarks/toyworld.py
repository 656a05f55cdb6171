"""Benchmark suite "toyworld": the bundled model's quality bar, then every engine method erasing
each shape, two colours and one style, scored by the judge (UA / IRA / CRA / distance), with
the time and peak memory of each erasure."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

from erase.toyworld.concepts import SHAPES

CONCEPTS = (*SHAPES, "red", "blue", "striped")  # the set: each shape, two colours, one style


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


def run(quick: bool = False) -> str:
    import numpy as np
    import torch

    from erase import erase_concepts, load_pipeline
    from erase.benchmarks import machine_description
    from erase.methods import available
    from erase.toyworld import weights_dir
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import DEFAULT_GUIDANCE, DEFAULT_STEPS, erasure_scores, generation_accuracy

    torch.manual_seed(0)
    pipe = load_pipeline(None)
    step = json.loads((weights_dir() / "toyworld.json").read_text()).get("step")
    judge = load_judge()
    # quick: every concept still, but one seed, 20 sampling steps and 24 of the retained combinations
    seeds = (0,) if quick else (0, 1)
    steps = 20 if quick else DEFAULT_STEPS
    max_retain = 24 if quick else None
    score_kw = dict(seeds=seeds, steps=steps, judge=judge, max_retain=max_retain)

    lines = ["## Toy world: bundled model and erasure scores", "",
             f"Machine: {machine_description()}. Command: `python scripts/benchmark.py --suite toyworld`. "
             f"Bundled model: {step} training steps. Sampling: DDIM {steps} steps, guidance {DEFAULT_GUIDANCE}, "
             f"seeds {list(seeds)} per prompt (scores are means over them), "
             f"{'24 retained combinations per concept' if max_retain else 'every retained combination'}; judge held-out accuracy "
             + ", ".join(f"{k} {_pct(v)}%" for k, v in judge.info.get("heldout_accuracy", {}).items()) + ".", ""]
    t = time.time()
    acc = generation_accuracy(pipe, seeds=seeds, steps=steps, judge=judge)
    lines += ["Quality bar (judge accuracy on generations for all 108 shape x colour x style prompts): "
              f"shape {_pct(acc['shape'])}%, colour {_pct(acc['colour'])}%, style {_pct(acc['style'])}%, "
              f"all three {_pct(acc['all_three'])}% ({time.time() - t:.0f} s).", ""]

    rows = []
    for concept in CONCEPTS:
        base = erasure_scores(pipe, concept, **score_kw)
        rows.append({"method": "none (base model)", "concept": concept, **base, "erase_s": 0.0, "peak": 0})
        for method in available():
            with peak_rss() as mem:
                result = erase_concepts(pipe, [concept], method=method, inplace=False)
            with result.applied(pipe):
                s = erasure_scores(pipe, concept, **score_kw)
            rows.append({"method": method, "concept": concept, **s, "erase_s": result.stats["seconds"], "peak": mem["peak"]})

    lines += ["### By method and kind of concept (means over concepts and seeds)", "",
              "| method | kind | concepts | UA % | IRA % | CRA % | distance | erase s | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
    for method in ["none (base model)", *available()]:
        for kind in ("shape", "colour", "style"):
            sel = [r for r in rows if r["method"] == method and r["kind"] == kind]
            if not sel:
                continue
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("UA", "IRA", "CRA", "distance", "erase_s")}
            peak = max(r["peak"] for r in sel)
            memory = f"{peak / 2**20:.0f} MiB" if peak else "–"
            erase_s = f"{mean['erase_s']:.0f}" if peak else "–"
            lines.append(f"| {method} | {kind} | {len(sel)} | {_pct(mean['UA'])} | {_pct(mean['IRA'])} | {_pct(mean['CRA'])} "
                         f"| {mean['distance']:.1f} | {erase_s} | {memory} |")
    lines += ["", "### Each concept", "", "| method | concept | UA % | IRA % | CRA % | distance | erase s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['concept']} | {_pct(r['UA'])} | {_pct(r['IRA'])} | {_pct(r['CRA'])} "
                     f"| {r['distance']:.1f} | {r['erase_s']:.0f} |")
    lines += ["", "UA: generations for prompts naming the concept that the judge no longer assigns to it. "
              "IRA: other concepts of the same kind still right; CRA: the other kinds still right (prompts not "
              "naming the concept). Distance: Fréchet distance of judge features between generations for prompts "
              "not naming the concept and renders of the same combinations (lower is closer; the base model's row "
              "is the floor). Methods run with their toy-world presets (`register(..., toyworld=...)` in "
              "erase/methods/), one erasure seed; peak RSS is the whole process's resident memory during the erasure."]
    return "\n".join(lines) + "\n"
