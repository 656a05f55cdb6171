"""Benchmark suite "toyworld": the bundled model's quality bar, then FMN and SalUn erasing one
concept of each kind, scored by the judge (UA / IRA / CRA / distance / time)."""

from __future__ import annotations

import time

CONCEPTS = ("star", "red", "striped")  # one shape, one colour, one style
METHODS = ("fmn", "salun")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def run(quick: bool = False) -> str:
    import torch

    from erase import erase_concepts, load_pipeline
    from erase.benchmarks import machine_description
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import DEFAULT_GUIDANCE, DEFAULT_STEPS, erasure_scores, generation_accuracy

    torch.manual_seed(0)
    pipe = load_pipeline(None)
    judge = load_judge()
    seeds = (0,) if quick else (0, 1)
    steps = 12 if quick else DEFAULT_STEPS
    concepts = CONCEPTS[:1] if quick else CONCEPTS

    lines = ["## Toy world: bundled model and erasure scores", "",
             f"Machine: {machine_description()}. Sampling: DDIM {steps} steps, guidance {DEFAULT_GUIDANCE}, "
             f"seeds {list(seeds)} per prompt; judge held-out accuracy "
             + ", ".join(f"{k} {_pct(v)}%" for k, v in judge.info.get("heldout_accuracy", {}).items()) + ".", ""]
    t = time.time()
    acc = generation_accuracy(pipe, seeds=seeds, steps=steps, judge=judge)
    lines += ["Quality bar (judge accuracy on generations for all 108 shape x colour x style prompts): "
              f"shape {_pct(acc['shape'])}%, colour {_pct(acc['colour'])}%, style {_pct(acc['style'])}%, "
              f"all three {_pct(acc['all_three'])}% ({time.time() - t:.0f} s).", ""]

    lines += ["| method | concept | kind | UA % | IRA % | CRA % | distance | erase s | before: UA / IRA / CRA |",
              "|---|---|---|---|---|---|---|---|---|"]
    for concept in concepts:
        base = erasure_scores(pipe, concept, seeds=seeds, steps=steps, judge=judge)
        for method in METHODS:
            result = erase_concepts(pipe, [concept], method=method, inplace=False)
            with result.applied(pipe):
                s = erasure_scores(pipe, concept, seeds=seeds, steps=steps, judge=judge)
            # distance: erased model's retained-prompt generations vs renders (base: see last column)
            lines.append(f"| {method} | {concept} | {s['kind']} | {_pct(s['UA'])} | {_pct(s['IRA'])} | {_pct(s['CRA'])} "
                         f"| {s['distance']:.2f} (base {base['distance']:.2f}) | {result.stats['seconds']:.0f} "
                         f"| {_pct(base['UA'])} / {_pct(base['IRA'])} / {_pct(base['CRA'])} |")
    lines += ["", "UA: generations for prompts naming the concept that the judge no longer assigns to it. "
              "IRA: other concepts of the same kind still right; CRA: the other kinds still right (prompts not "
              "naming the concept). Distance: Frechet distance of judge features, generations for prompts not "
              "naming the concept vs renders of the same combinations (lower is closer)."]
    return "\n".join(lines) + "\n"
