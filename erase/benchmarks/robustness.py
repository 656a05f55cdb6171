"""Benchmark suite "robustness": does an erasure hold under attack? Every registered method erases
one shape, one colour and one style of the bundled toy world (``CONCEPTS``); each erasure is
scored (UA / IRA / CRA / UA held-out, as the toyworld suite) and then attacked with every attack
of erase.attacks (textual inversion, the UnlearnDiffAtk-style prompt attack, relapse under
benign fine-tuning), each with its toy-world preset; the judge gives post-attack UA. The robust
methods run with several erasure seeds (``ERASE_SEEDS``: three for the recommended method and
rece-adv, two for advunlearn), the others with one.

The attackers' data (the base model's images of the concept, the retain images) is made once
per concept and shared by every method's attacks. Resumable like the toyworld suite: every
finished (method, concept, erasure seed) cell is appended to ``toyworld-cache/robustness.jsonl``
and keyed by the method's settings and source hash and the attacks' settings and source, so a
changed method or attack reruns only its own cells. ``run_cells`` may be called by several
processes on one cache (each skips what the others finished).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time

from erase.benchmarks.toyworld import BASE, CACHE_DIR, Cells, _method_hash, _pct, peak_rss

CONCEPTS = ("square", "red", "striped")  # one shape, one colour, one style
ERASE_SEEDS = {"rece-adv": 3, "rece": 3, "advunlearn": 2}  # erasure seeds 0 .. n - 1 (other methods: seed 0)
ATTACKS = ("ti", "prompt", "relapse")
METHOD_ORDER = ("rece-adv", "rece", "advunlearn", "uce", "esd", "salun", "fmn")
SCORE_SEED = 0
TI_RESTARTS = 3  # textual inversion is also run with attack seeds 1 .. TI_RESTARTS - 1: the attacker's best of three


def _attack_hash() -> str:
    from erase import attacks

    parts = {}
    for name in ATTACKS:
        spec = attacks.get(name)
        parts[name] = {"src": inspect.getsource(inspect.getmodule(spec.run)),
                       "config": dataclasses.asdict(attacks.make_config(name, toyworld=True))}
    parts["shared"] = inspect.getsource(attacks)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_key(method: str, concept: str, erase_seed: int | None) -> str:
    from erase.methods import make_config

    if method == BASE:
        return f"{BASE}|{concept}|-|{_attack_hash()}"
    conf = dataclasses.asdict(make_config(method, {"seed": erase_seed}, toyworld=True))
    return f"{method}|{concept}|{erase_seed}|{_method_hash(method, conf)}|{_attack_hash()}"


def restarts_key(method: str, concept: str, erase_seed: int | None) -> str:
    """The cache key of a cell's further textual-inversion runs (attack seeds 1 .. TI_RESTARTS - 1)."""
    return f"{cell_key(method, concept, erase_seed)}|ti-restarts-{TI_RESTARTS}"


def cells_todo(methods=None) -> list[tuple[str, int | None]]:
    from erase.methods import available

    order = [m for m in METHOD_ORDER if m in available()] + [m for m in available() if m not in METHOD_ORDER]
    # every method's first seed first, then the robust ones' second, then their third
    todo = [(m, s) for s in range(max(ERASE_SEEDS.values())) for m in methods or order if s < ERASE_SEEDS.get(m, 1)]
    return todo + [(BASE, None)]


def run_cells(methods=None, concepts=CONCEPTS, log=print) -> Cells:
    """Compute every missing cell: each method's erasure, its scores and every attack on it, then
    the base model attacked (what an attack does with no erasure in its way); then, for every
    erasure, textual inversion again with attack seeds 1 .. TI_RESTARTS - 1 from the same images
    (on the erasure this run made, or made again: it is deterministic)."""
    import torch

    from erase import erase_concepts, load_pipeline
    from erase.attacks import make_config, run_attack
    from erase.robustness import AttackData
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import world_scores

    cells = Cells(CACHE_DIR / "robustness.jsonl")
    torch.manual_seed(0)
    pipe = load_pipeline(None)
    judge = load_judge()
    data: dict[str, AttackData] = {}  # per concept, shared by every method's attacks
    made: dict[tuple, object] = {}  # this run's erasures, for their textual-inversion restarts

    for method, seed in cells_todo(methods):
        for concept in concepts:
            key = cell_key(method, concept, seed)
            if cells.get(key):
                continue
            t0 = time.time()
            result, peak = None, 0
            if method != BASE:
                with peak_rss() as mem:
                    result = erase_concepts(pipe, [concept], method=method, config={"seed": seed}, inplace=False)
                peak = mem["peak"]
                made[method, seed, concept] = result
                with result.applied(pipe):
                    row = world_scores(pipe, [concept], seed=SCORE_SEED, judge=judge, heldout=12)[concept]
            else:
                row = world_scores(pipe, [concept], seed=SCORE_SEED, judge=judge, heldout=12)[concept]
            erase_s = result.stats["seconds"] if result is not None else 0.0
            log(f"[robustness] {method} (seed {seed}) {concept}: UA {_pct(row['UA'])} IRA {_pct(row['IRA'])} CRA {_pct(row['CRA'])}"
                f" in {erase_s:.0f} s")
            post = {}
            for attack in ATTACKS:
                t = time.time()
                shared = data.setdefault(concept, AttackData(pipe, concept)).get(attack, make_config(attack, toyworld=True))
                res = run_attack(pipe, concept, attack, erasure=result, data=shared,
                                 seeds=(SCORE_SEED,), judge=judge)
                post[attack] = {"UA": res.ua, "seconds": round(time.time() - t, 1), "prompts": sorted(set(res.prompts))[:3]}
                log(f"[robustness]   {attack}: post-attack UA {_pct(res.ua)} ({time.time() - t:.0f} s)")
            cells.add({"key": key, "method": method, "erase_seed": seed, "concept": concept, "kind": row["kind"],
                       **{k: row[k] for k in ("UA", "IRA", "CRA", "UA_heldout") if k in row},
                       "attacks": post, "erase_s": erase_s, "peak": peak,
                       "components": result.components() if result is not None else [], "cell_s": round(time.time() - t0, 1)})

    for method, seed in cells_todo(methods):
        if method == BASE:
            continue
        for concept in concepts:
            key = restarts_key(method, concept, seed)
            if cells.get(key) or not cells.get(cell_key(method, concept, seed)):
                continue
            t0 = time.time()
            result = made.pop((method, seed, concept), None) or erase_concepts(pipe, [concept], method=method,
                                                                                config={"seed": seed}, inplace=False)
            cfg = make_config("ti", toyworld=True)
            shared = data.setdefault(concept, AttackData(pipe, concept)).get("ti", cfg)
            # attack seeds 1 .. TI_RESTARTS - 1 (seed 0 is the cell's own run), from the same images
            again = run_attack(pipe, concept, "ti", dataclasses.replace(cfg, seed=cfg.seed + 1), erasure=result, data=shared,
                               seeds=(SCORE_SEED,), judge=judge, restarts=TI_RESTARTS - 1)
            uas = again.stats["restarts"]["UA"]
            log(f"[robustness] {method} (seed {seed}) {concept}: ti with attack seeds 1-{TI_RESTARTS - 1}: "
                + ", ".join(_pct(u) for u in uas) + f" ({time.time() - t0:.0f} s)")
            cells.add({"key": key, "method": method, "erase_seed": seed, "concept": concept, "ti_restarts": uas,
                       "cell_s": round(time.time() - t0, 1)})
    return cells


def render(cells: Cells, header: str = "") -> str:
    rows = [r for r in cells.rows.values() if r["key"] == cell_key(r["method"], r["concept"], r["erase_seed"])]
    todo = cells_todo()
    lines = [header] if header else []
    lines += ["| method | erasure seed | concept | UA % | IRA % | CRA % | UA held-out % | "
              + " | ".join(f"post-{a} UA %" for a in ATTACKS) + f" | post-ti UA %, best of {TI_RESTARTS} | min post-attack UA % | erase s |",
              "|---|---|---|---|---|---|---|" + "---|" * len(ATTACKS) + "---|---|---|"]
    missing = []
    for method, seed in todo:
        for concept in CONCEPTS:
            r = next((r for r in rows if r["method"] == method and r["concept"] == concept and r["erase_seed"] == seed), None)
            if r is None:
                missing.append(f"{method} (seed {seed}) {concept}" if seed is not None else f"{method} {concept}")
                continue
            post = [r["attacks"][a]["UA"] for a in ATTACKS]
            again = cells.get(restarts_key(method, concept, seed)) if method != BASE else None
            best_ti = min([post[ATTACKS.index("ti")], *again["ti_restarts"]]) if again else None
            if again is None and method != BASE:
                missing.append(f"ti restarts of {method} (seed {seed}) {concept}")
            lines.append(f"| {method} | {'–' if seed is None else seed} | {concept} | {_pct(r['UA'])} | {_pct(r['IRA'])} | "
                         f"{_pct(r['CRA'])} | {_pct(r['UA_heldout'])} | " + " | ".join(_pct(p) for p in post)
                         + f" | {'–' if best_ti is None else _pct(best_ti)} | {_pct(min([*post, *([best_ti] if again else [])]))}"
                         f" | {r['erase_s']:.0f} |")
    if missing:
        lines += ["", "Not measured yet (the suite is resumable; these cells had not finished when this table was "
                  "written): " + "; ".join(missing) + "."]
    lines += ["", "UA / IRA / CRA / UA held-out as in the toyworld suite (scoring seed 0, all 108 prompts). Post-attack UA: the "
              "share of the attacked generations (the concept's 18 UA prompts, 36 for a style, same seeds) the judge does not "
              "assign to the concept; the base model's row shows what each attack produces with no erasure in its way. "
              "Attacks with their toy-world presets (configs/attacks/toyworld.yaml): `ti` one new token, 150 steps on 64 "
              "base-model images; `prompt` UnlearnDiffAtk-style discrete prefix tokens; `relapse` 200 steps of fine-tuning on "
              "64 retain images (the UNet, and the text encoder when the erasure changed it). "
              f"Best of {TI_RESTARTS}: the lowest post-`ti` UA over attack seeds 0 .. {TI_RESTARTS - 1} from the same images, what an "
              "attacker who restarts gets (one run's outcome varies a lot with its seed, docs/attacks.md); "
              "the min column counts it. Erase s: the erasure's own time on this shared CPU."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, compute: bool = True) -> str:
    from erase.benchmarks import machine_description

    cells = run_cells(concepts=CONCEPTS[:1] if quick else CONCEPTS) if compute else Cells(CACHE_DIR / "robustness.jsonl")
    header = "\n".join([
        "## Robustness: erasures under attack (toy world)", "",
        f"Machine: {machine_description()}. Command: `python scripts/benchmark.py --suite robustness` (resumable: cells are "
        "cached in toyworld-cache/robustness.jsonl). Every method with its toy-world preset; "
        + "; ".join(f"{m} with erasure seeds {', '.join(str(s) for s in range(n))}" for m, n in ERASE_SEEDS.items())
        + ", the others seed 0.", ""])
    return render(cells, header)
