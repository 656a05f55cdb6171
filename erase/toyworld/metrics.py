"""Erasure metrics on the toy world, UnlearnCanvas style, scored by the judge.

For a concept c of kind K (shape, colour or style):
- UA: share of generations for prompts naming c that the judge no longer assigns to c (head K).
- IRA: head-K accuracy on prompts naming another concept of kind K (c absent).
- CRA: accuracy of the other heads on prompts not naming c.
- distance: Frechet distance between Gaussians fitted to the judge's features of the pipe's
  generations for prompts not naming c and those of the reference (``reference_pipe``'s
  generations for the same prompts and seeds, or renders of the same combinations).
- seconds: wall time of the evaluation.

Every image has a fixed seed derived from (seed, combination index), so two pipelines given
the same prompts start from the same noise.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from erase.models import sampling_autocast
from erase.toyworld.concepts import KINDS, caption, combinations, concept_kind
from erase.toyworld.judge import Judge, load_judge

DEFAULT_GUIDANCE = 7.5  # measured at 2000 steps (15 sampling steps): 2 -> 64%, 4 -> 86%, 7 -> 93% all three right
DEFAULT_STEPS = 25
_ORDER = {"shape": 0, "colour": 1, "style": 2}


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch: int = 64) -> np.ndarray:
    """uint8 images (n, H, W, 3), one per (prompt, seed) pair, in that order."""
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        with sampling_autocast(pipe):
            res = pipe(list(prompts[i : i + batch]), num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, output_type="np")
        out.append(np.round(np.asarray(res.images) * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def _jobs(triples, seeds, template: int = 0):
    """(prompts, per-image seeds, labels) for each triple x seed."""
    index = {t: i for i, t in enumerate(combinations())}
    prompts, img_seeds, labels = [], [], []
    for s in seeds:
        for t in triples:
            prompts.append(caption(*t, template=template))
            img_seeds.append(int(s) * 1000 + index[t])
            labels.append([KINDS["shape"].index(t[0]), KINDS["colour"].index(t[1]), KINDS["style"].index(t[2])])
    return prompts, img_seeds, np.array(labels, dtype=np.int64).reshape(-1, 3)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def generation_accuracy(pipe, *, seeds: Sequence[int] = (0,), steps: int = DEFAULT_STEPS,
                        guidance: float = DEFAULT_GUIDANCE, judge: Judge | None = None,
                        template: int = 0) -> dict:
    """The quality bar: judge accuracy per head on every shape x colour x style prompt."""
    judge = judge or load_judge()
    prompts, img_seeds, labels = _jobs(combinations(), seeds, template)
    images = generate(pipe, prompts, img_seeds, steps=steps, guidance=guidance)
    acc = judge.accuracy(images, labels)
    pred = judge.logits(images)
    all_right = np.ones(len(labels), bool)
    for j, k in enumerate(KINDS):
        all_right &= pred[k].argmax(1).numpy() == labels[:, j]
    return {**acc, "all_three": float(all_right.mean()), "n": len(labels)}


def _ua_ira_cra(kind: str, f_pred: dict, f_labels: np.ndarray, r_pred: dict, r_labels: np.ndarray) -> tuple[float, float, float]:
    """UA, IRA and CRA from the judge's predicted labels per head (dicts of arrays) on the images
    of prompts naming the concept (f) and not naming it (r), with their true labels."""
    k = _ORDER[kind]
    ua = float((f_pred[kind] != f_labels[:, k]).mean())
    ira = float((r_pred[kind] == r_labels[:, k]).mean())
    cra = float(np.mean([(r_pred[name] == r_labels[:, j]).mean() for j, name in enumerate(KINDS) if j != k]))
    return ua, ira, cra


def _predictions(logits: dict) -> dict:
    return {name: v.argmax(1).numpy() for name, v in logits.items()}


def heldout_prompts(concept: str, n: int = 24) -> list[str]:
    """``n`` captions naming the concept in phrasings no method trains on (not in
    ``context_prompts()``, nor any training template): to see whether an erasure generalises."""
    from erase.concepts import mentions
    from erase.toyworld.concepts import context_prompts, varied_captions

    seen = set(context_prompts())
    return [p for p in varied_captions(6000, seed=7) if p not in seen and mentions(p, concept)][:n]


def world_scores(pipe, concepts: Sequence[str], *, seed: int = 0, steps: int = DEFAULT_STEPS,
                 guidance: float = DEFAULT_GUIDANCE, judge: Judge | None = None, heldout: int = 24) -> dict:
    """``erasure_scores`` for several concepts from one generation of all 108 combinations (one
    scoring seed), plus ``UA_heldout``: UA on ``heldout`` captions phrased unlike any training
    prompt. The images are those ``erasure_scores`` draws for the same seed."""
    judge = judge or load_judge()
    t0 = time.time()
    triples = combinations()
    prompts, img_seeds, labels = _jobs(triples, [seed])
    extra = {c: heldout_prompts(c, heldout) for c in concepts} if heldout else {}
    extra_prompts = [p for c in concepts for p in extra.get(c, [])]
    # per concept the same seeds whichever concepts are scored together (base model: all at once)
    extra_seeds = [500_000 + seed * 1000 + i for c in concepts for i in range(len(extra.get(c, [])))]
    images = generate(pipe, prompts + extra_prompts, img_seeds + extra_seeds, steps=steps, guidance=guidance)
    world, held = images[: len(prompts)], images[len(prompts):]
    pred = _predictions(judge.logits(world))
    feats = judge.features(world)
    held_pred = judge.logits(held) if len(held) else None
    from erase.toyworld.render import render

    out, start = {}, 0
    for c in concepts:
        kind = concept_kind(c)
        c = c.strip().lower()
        forget = np.array([t[_ORDER[kind]] == c for t in triples])
        ua, ira, cra = _ua_ira_cra(kind, {n: p[forget] for n, p in pred.items()}, labels[forget],
                                   {n: p[~forget] for n, p in pred.items()}, labels[~forget])
        keep = [i for i in range(len(triples)) if not forget[i]]
        ref = np.stack([np.asarray(render(*triples[i], img_seeds[i])) for i in keep])
        distance = frechet_distance(feats[keep], judge.features(ref))
        row = {"concept": c, "kind": kind, "UA": ua, "IRA": ira, "CRA": cra, "distance": distance,
               "n_forget": int(forget.sum()), "n_retain": len(keep)}
        n = len(extra.get(c, []))
        if n:
            idx = KINDS[kind].index(c)
            row["UA_heldout"] = float((held_pred[kind][start:start + n].argmax(1).numpy() != idx).mean())
            row["n_heldout"] = n
            start += n
        out[c] = row
    for row in out.values():
        row["seconds"] = round(time.time() - t0, 2)
    return out


def erasure_scores(pipe, concept: str, *, reference_pipe=None, seeds: Sequence[int] = (0, 1),
                   steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                   judge: Judge | None = None, max_retain: int | None = None) -> dict:
    """UA, IRA, CRA (shares in [0, 1]), distance and seconds for a pipeline after erasing
    `concept` (see the module docstring). EraseError if the world lacks the concept.
    ``max_retain`` keeps an evenly spread subset of the retained combinations (faster)."""
    kind = concept_kind(concept)
    concept = concept.strip().lower()
    k = _ORDER[kind]
    t0 = time.time()
    judge = judge or load_judge()
    forget = [t for t in combinations() if t[k] == concept]
    retain = [t for t in combinations() if t[k] != concept]
    if max_retain is not None and max_retain < len(retain):
        retain = [retain[round(i * len(retain) / max_retain)] for i in range(max_retain)]
    f_prompts, f_seeds, f_labels = _jobs(forget, seeds)
    r_prompts, r_seeds, r_labels = _jobs(retain, seeds)
    images = generate(pipe, f_prompts + r_prompts, f_seeds + r_seeds, steps=steps, guidance=guidance)
    f_img, r_img = images[: len(f_prompts)], images[len(f_prompts):]

    ua, ira, cra = _ua_ira_cra(kind, _predictions(judge.logits(f_img)), f_labels, _predictions(judge.logits(r_img)), r_labels)

    if reference_pipe is not None:
        ref = generate(reference_pipe, r_prompts, r_seeds, steps=steps, guidance=guidance)
        reference = "reference_pipe"
    else:
        from erase.toyworld.render import render

        ref = np.stack([np.asarray(render(*t, seed)) for t, seed in zip(retain * len(seeds), r_seeds)])
        reference = "renders"
    distance = frechet_distance(judge.features(r_img), judge.features(ref))
    return {"concept": concept, "kind": kind, "UA": ua, "IRA": ira, "CRA": cra, "distance": distance,
            "distance_reference": reference, "n_forget": len(f_prompts), "n_retain": len(r_prompts),
            "seconds": round(time.time() - t0, 2)}
