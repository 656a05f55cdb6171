"""Benchmark suite "lora": what a low-rank LoRA export costs an erasure, on the bundled toy world.

For two methods (``METHODS``) and two concepts (``CONCEPTS``: a shape and a colour), the erasure
(toy-world preset, erasure seed 0) is scored as the full delta and as its LoRA at ranks 1, 4, 16
and full (erase.lora.factorise; the LoRA model is base + up·down, i.e. what ``load_lora_weights``
or ``fuse_lora`` gives, without the biases/norms a LoRA cannot carry), with
``erase.toyworld.metrics.world_scores`` (all 108 prompts, scoring seed 0, 12 held-out phrasings).
The base model is scored too. Resumable: every finished cell is appended to
``toyworld-cache/lora.jsonl``, keyed by the method's settings and source and the factorisation's
source. ``pick_rank`` reads the default rank off the table.
"""

from __future__ import annotations

import hashlib
import inspect
import time

from erase.benchmarks.toyworld import BASE, CACHE_DIR, Cells, _method_hash, _pct

METHODS = ("uce", "esd")
CONCEPTS = ("square", "red")
RANKS = ("delta", "full", 16, 4, 1)  # 'delta': the erasure itself, every changed tensor
SCORE_SEED = 0
HELDOUT = 12
TOLERANCE = 0.02  # a rank is good enough when UA, IRA and CRA are within 2 points of the delta's


def _lora_hash() -> str:
    from erase import lora

    blob = inspect.getsource(lora.factorise) + inspect.getsource(lora.LoraFactors)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cell_key(method: str, concept: str, rank, steps: int) -> str:
    import dataclasses

    from erase.methods import make_config

    if method == BASE:
        return f"{BASE}|{concept}|{SCORE_SEED}|{steps}|{HELDOUT}"
    conf = dataclasses.asdict(make_config(method, {"seed": 0}, toyworld=True))
    lora = "" if rank == "delta" else f"|{_lora_hash()}"
    return f"{method}|{concept}|{rank}|{SCORE_SEED}|{steps}|{HELDOUT}|{_method_hash(method, conf)}{lora}"


def _bytes(tensors) -> int:
    return sum(t.numel() * 4 for t in tensors)  # fp32, as the exports write them


def run_cells(methods=METHODS, concepts=CONCEPTS, ranks=RANKS, quick: bool = False, log=print) -> Cells:
    import torch

    from erase import erase_concepts, load_pipeline
    from erase.api import ErasureResult
    from erase.lora import factorise
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import DEFAULT_STEPS, world_scores

    steps = 20 if quick else DEFAULT_STEPS
    heldout = 0 if quick else HELDOUT
    cells = Cells(CACHE_DIR / "lora.jsonl")
    pipe, judge = None, None

    def setup():
        nonlocal pipe, judge
        if pipe is None:
            torch.manual_seed(0)
            pipe, judge = load_pipeline(None), load_judge()

    def score(concept, weights=None) -> dict:
        t0 = time.time()
        if weights is None:
            s = world_scores(pipe, [concept], seed=SCORE_SEED, steps=steps, judge=judge, heldout=heldout)[concept]
        else:
            with weights.applied(pipe):
                s = world_scores(pipe, [concept], seed=SCORE_SEED, steps=steps, judge=judge, heldout=heldout)[concept]
        row = {k: s[k] for k in ("UA", "IRA", "CRA", "UA_heldout") if k in s}
        row["score_s"] = round(time.time() - t0, 1)
        return row

    for concept in concepts:
        key = cell_key(BASE, concept, None, steps)
        if not cells.get(key):
            setup()
            cells.add({"key": key, "method": BASE, "concept": concept, "rank": "-", **score(concept)})
            log(f"lora: base '{concept}' done")
    for method in methods:
        for concept in concepts:
            todo = [r for r in ranks if not cells.get(cell_key(method, concept, r, steps))]
            if not todo:
                continue
            setup()
            result = erase_concepts(pipe, [concept], method, {"seed": 0}, inplace=False)
            for rank in todo:
                row = {"key": cell_key(method, concept, rank, steps), "method": method, "concept": concept, "rank": rank,
                       "erase_s": round(result.stats["seconds"], 1)}
                if rank == "delta":
                    weights = result
                    row.update(bytes=_bytes(result.tensors.values()), tensors=len(result.tensors))
                else:
                    factors = factorise(result, rank)
                    merged = factors.merged(result.original)
                    weights = ErasureResult(method, [concept], "", {}, merged, {k: result.original[k] for k in merged})
                    errors = list(factors.errors.values())
                    row.update(bytes=_bytes(list(factors.down.values()) + list(factors.up.values())), modules=len(errors),
                               max_rank=factors.max_rank(), error_max=max(errors), error_mean=sum(errors) / len(errors),
                               left_out=len(factors.left_out))
                row.update(score(concept, weights))
                cells.add(row)
                log(f"lora: {method} '{concept}' rank {rank}: UA {_pct(row['UA'])} IRA {_pct(row['IRA'])} CRA {_pct(row['CRA'])}")
    return cells


def pick_rank(rows: list[dict], candidates=(1, 4, 16), tolerance: float = TOLERANCE):
    """The smallest rank whose UA, IRA and CRA are within ``tolerance`` of the delta's in every
    (method, concept) measured; 'full' if none is."""
    by = {(r["method"], r["concept"], r["rank"]): r for r in rows}
    pairs = {(r["method"], r["concept"]) for r in rows if r["method"] != BASE}
    for rank in candidates:
        ok = True
        for m, c in pairs:
            d, x = by.get((m, c, "delta")), by.get((m, c, rank))
            if d is None or x is None or any(abs(x[k] - d[k]) > tolerance + 1e-9 for k in ("UA", "IRA", "CRA")):
                ok = False
        if ok and pairs:
            return rank
    return "full"


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def render(rows: list[dict], header: str, ranks=RANKS) -> str:
    from erase.lora import DEFAULT_RANK

    lines = [header, "| method | concept | model | UA % | IRA % | CRA % | UA held-out % | ‖ΔW − LoRA‖/‖ΔW‖ max (mean) | not in the LoRA | size (fp32) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["method"], r["concept"], r["rank"]): r for r in rows}
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    for c in concepts:
        b = by.get((BASE, c, "-"))
        if b:
            lines.append(f"| base model | {c} | – | {_pct(b['UA'])} | {_pct(b['IRA'])} | {_pct(b['CRA'])} | "
                         f"{_pct(b['UA_heldout']) if 'UA_heldout' in b else '–'} | – | – | – |")
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != BASE))
    for m in methods:
        for c in concepts:
            for rank in ranks:
                r = by.get((m, c, rank))
                if r is None:
                    continue
                if rank == "delta":
                    label, err, out = "delta (all changed tensors)", "–", "–"
                else:
                    label = f"LoRA rank {rank}" + (f" (≤ {r['max_rank']})" if rank == "full" else "")
                    err = f"{r['error_max']:.3f} ({r['error_mean']:.3f})"
                    out = f"{r['left_out']} tensors" if r["left_out"] else "none"
                held = _pct(r["UA_heldout"]) if "UA_heldout" in r else "–"
                lines.append(f"| `{m}` | {c} | {label} | {_pct(r['UA'])} | {_pct(r['IRA'])} | {_pct(r['CRA'])} | {held} | {err} | {out} | {_size(r['bytes'])} |")
    picked = pick_rank(rows)
    lines += ["", f"Smallest rank within {100 * TOLERANCE:.0f} points of the delta on UA, IRA and CRA in every row measured: "
                  f"**{picked}**; the LoRA export's default (`erase.lora.DEFAULT_RANK`, `--lora-rank`) is **{DEFAULT_RANK}**."]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    from erase.benchmarks import machine_description

    methods, concepts, ranks = (METHODS[:1], CONCEPTS[:1], ("delta", "full", 4)) if quick else (METHODS, CONCEPTS, RANKS)
    cells = run_cells(methods, concepts, ranks, quick=quick)
    from erase.toyworld.metrics import DEFAULT_STEPS

    steps = 20 if quick else DEFAULT_STEPS
    wanted = {cell_key(BASE, c, None, steps) for c in concepts}
    wanted |= {cell_key(m, c, r, steps) for m in methods for c in concepts for r in ranks}
    rows = [r for k, r in cells.rows.items() if k in wanted]
    header = "\n".join([
        "## LoRA exports: what low rank costs (toy world)", "",
        f"Machine: {machine_description()}. Command: `python scripts/benchmark.py --suite lora` (resumable: cells are cached in "
        "toyworld-cache/lora.jsonl). Each method with its toy-world preset (erasure seed 0), scored on all 108 prompts "
        f"(scoring seed {SCORE_SEED}) and {HELDOUT} held-out phrasings by the judge, as the delta and as its LoRA "
        "(base + up·down, as `load_lora_weights` / `fuse_lora` apply it; biases and norms a LoRA cannot carry are left out). "
        "Weight error: relative Frobenius norm of what the truncated SVD drops, worst and mean module. Size: the LoRA's "
        "factors (or the delta's tensors) in fp32.", ""])
    return render(rows, header, ranks)
