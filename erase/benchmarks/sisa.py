"""SISA executors benchmark: train and delete wall time, serial vs a process pool vs Ray.

``run(quick)`` returns the ``## SISA executors`` section of BENCHMARKS.md. On the digits
training split (the classifier suite's data; an MLP 64-1024-1024-10), SISA with S = 4 shards x R = 4 slices is
trained and then asked to delete one sample from slice 0 of two shards (both retrained in
full), with each executor: serial, a process pool of 1 and 2 workers, Ray tasks on a local
instance (``num_cpus=2``) with 1 and 2 in flight. Every run is checked bit for bit against the
serial one. From the serial run's per-shard cost it projects the time of S = 20 shards on
W = 1, 2, 4, 8 workers: ceil(S / W) x (per-shard cost + the measured per-task overhead), a
projection (no contention, equal shards), not a measurement.

Each shard task trains with one torch thread (``threads=1``); the workers inherit
``OMP_NUM_THREADS`` (Ray sets it to the task's CPUs).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

SHARDS, SLICES = 4, 4
HIDDEN = (1024, 1024)  # wide enough that a shard task costs seconds, not milliseconds
PROJECT_SHARDS, PROJECT_WORKERS = 20, (1, 2, 4, 8)


REPEATS = 3
_DATA = None  # the digits dataset, loaded by run()


def _config(quick: bool, **executor):
    from erase.classifier.sisa import SISAConfig

    return SISAConfig(shards=SHARDS, slices=SLICES, epochs_per_slice=2 if quick else 10, threads=1, **executor)


def _delete_ids(model) -> np.ndarray:
    a = model.assignment
    return np.array([np.flatnonzero((a.shard == s) & (a.slice == 0))[0] for s in (0, 1)])


def _start(factory, cfg) -> tuple[object, float, float]:
    """The executor of ``cfg``, started by a tiny fit (each worker imports torch); (executor, start s, tiny s).

    The tiny fit (80 samples, 1 epoch) is run 6 times: the first starts the workers, the
    fastest of the other 5 is the executor's per-call cost for S tiny tasks.
    """
    from erase.classifier.sisa import SISAModel

    executor = SISAModel(factory, cfg, seed=0).executor
    tiny_cfg = dataclasses.replace(cfg, epochs_per_slice=1)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        SISAModel(factory, tiny_cfg, seed=0, executor=executor).fit(_DATA.X_train[:80], _DATA.y_train[:80])
        times.append(time.perf_counter() - t0)
    return executor, times[0], min(times[1:])


def _fit_delete(factory, cfg, executor) -> tuple[float, float, dict, dict]:
    from erase.classifier.sisa import SISAModel

    t0 = time.perf_counter()
    model = SISAModel(factory, cfg, seed=0, executor=executor).fit(_DATA.X_train, _DATA.y_train)
    train = time.perf_counter() - t0
    fitted = model.state_dict()
    stats = model.delete(_delete_ids(model))
    return train, stats["seconds"], fitted, model.state_dict()


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _measure_all(quick: bool) -> tuple[dict, float | None, str]:
    """Start every executor, then run fit + delete with each in turn, ``repeats`` rounds (interleaved,
    so that every executor meets the same changing load); keeps the fastest of each."""
    from erase.classifier.executors import ray_available
    from erase.classifier.models import mlp_factory

    factory = mlp_factory(_DATA.X_train.shape[1], int(_DATA.n_classes), HIDDEN)
    setups = {"serial": _config(quick)}
    for w in (1, 2):
        setups[f"process pool, {w} worker{'s' if w > 1 else ''}"] = _config(quick, executor="process", workers=w)
    ray, ray_boot, ray_note = None, None, ""
    if ray_available():
        import ray

        if not ray.is_initialized():
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            ray_boot = time.perf_counter() - t0
        for w in (1, 2):
            setups[f"ray, {w} in flight"] = _config(quick, executor="ray", workers=w)
    else:
        ray_note = "Ray is not installed here (pip install 'erase[ray]'): no Ray rows."
    runs = {}
    try:
        for name, cfg in setups.items():
            executor, start, tiny = _start(factory, cfg)
            runs[name] = {"executor": executor, "start": start, "tiny": tiny, "train": [], "delete": []}
        for _ in range(1 if quick else REPEATS):
            for name, cfg in setups.items():
                r = runs[name]
                train, delete, r["fitted"], r["deleted"] = _fit_delete(factory, cfg, r["executor"])
                r["train"].append(train)
                r["delete"].append(delete)
    finally:
        for r in runs.values():
            if hasattr(r["executor"], "close"):
                r["executor"].close()
        if ray_boot is not None:
            ray.shutdown()
    for r in runs.values():
        r["train"], r["delete"] = min(r["train"]), min(r["delete"])
    return runs, ray_boot, ray_note


def run(quick: bool = False) -> str:
    from erase.benchmarks import machine_description
    from erase.classifier.data import load_dataset
    from erase.classifier.executors import projected_seconds

    global _DATA
    t_start = time.perf_counter()
    data = _DATA = load_dataset("digits", seed=0)
    reps = 1 if quick else REPEATS
    runs, ray_boot, ray_note = _measure_all(quick)
    ref = runs["serial"]
    per_shard = ref["train"] / SHARDS

    rows = []
    for name, r in runs.items():
        same = _same(r["fitted"], ref["fitted"]) and _same(r["deleted"], ref["deleted"])
        rows.append(f"| {name} | {r['start']:.1f} | {r['tiny']:.2f} | {r['train']:.2f} | {ref['train'] / r['train']:.2f}x | "
                    f"{r['delete']:.2f} | {ref['delete'] / r['delete']:.2f}x | {'yes' if same else '**no**'} |")
    table = "\n".join(rows)

    def overhead(name: str) -> float | None:  # per task: S tiny tasks through 1 worker, minus serially here, / S
        r = runs.get(name)
        return None if r is None else max(0.0, r["tiny"] - ref["tiny"]) / SHARDS

    ov_proc, ov_ray = overhead("process pool, 1 worker"), overhead("ray, 1 in flight")
    small = ref["train"] / PROJECT_SHARDS  # digits cut into 20 shards: the same samples, 20 smaller tasks
    proj = []
    for w in PROJECT_WORKERS:
        cells = [projected_seconds(PROJECT_SHARDS, w, small)]
        cells += [projected_seconds(PROJECT_SHARDS, w, small + ov) if ov is not None else None for ov in (ov_proc, ov_ray)]
        cells.append(projected_seconds(PROJECT_SHARDS, w, per_shard))
        shown = " | ".join("–" if c is None else f"{c:.1f}" for c in cells)
        proj.append(f"| {w} | {math.ceil(PROJECT_SHARDS / w)} | {shown} |")
    proj_table = "\n".join(proj)
    ray_line = f"Starting the local Ray instance took {ray_boot:.1f} s (not in the rows). " if ray_boot is not None else ""
    ov_line = f"process pool {ov_proc:.3f} s" + (f", Ray {ov_ray:.3f} s" if ov_ray is not None else "")
    shard_n = len(data.y_train) // SHARDS
    total = time.perf_counter() - t_start
    epochs = 2 if quick else 10
    return f"""## SISA executors: serial, process pool, Ray

Machine: {machine_description()}; **2 cores shared with other jobs**, so every time here is
indicative and a 2-worker speed-up is bounded by what the other jobs left free. Generated by
`python scripts/benchmark.py --suite sisa{' --quick' if quick else ''}` in {total:.0f} s.

SISA on the digits training split ({len(data.y_train)} images), MLP 64-{'-'.join(map(str, HIDDEN))}-10 (wider than the
classifier suite's, so that a shard task costs seconds), S = {SHARDS} shards x R = {SLICES} slices,
{epochs} epochs per slice, Adam lr 3e-3, batch 64, one torch thread per shard task (`threads=1`).
*start*: a tiny fit (80 samples, 1 epoch) that starts the workers: the process pool spawns them
and each imports torch; Ray's workers import torch and erase on their first task. *4 tiny
tasks*: the same tiny fit again, workers up (fastest of 5): the executor's per-call cost.
*train*: `fit` on the whole split with the workers up. *delete*: one sample from slice 0 of
shards 0 and 1, so both shards are retrained in full (2 shard tasks). Train and delete: the
fastest of {reps} rounds, each round running every executor in turn (so all meet the same
changing load; the fastest run is the least disturbed by the other jobs). *same bits*: weights
after the fit and after the delete equal the serial run's, tensor for tensor. Ray rows: a local
instance started with `ray.init(num_cpus=2)`, the executor's `workers` limiting the shard tasks
in flight. {ray_line}{ray_note}

| executor | start (s) | 4 tiny tasks (s) | train (s) | train speed-up | delete 2 shards (s) | delete speed-up | same bits |
|---|---|---|---|---|---|---|---|
{table}

Per-shard cost (serial train / {SHARDS}): **{per_shard:.2f} s** for {shard_n} samples x {SLICES} slice steps.
Per-task overhead (4 tiny tasks through 1 worker minus the same serially, / 4): {ov_line}.

**Projection, not a measurement**: S = {PROJECT_SHARDS} shards on W workers = ceil(S/W) x (per-shard cost
+ the per-task overhead above), assuming W free cores and shards of equal cost, and workers
already started (add the *start* column once). Cutting the same digits split into
{PROJECT_SHARDS} shards gives shards of 1/{PROJECT_SHARDS} of the data, costing the serial train time / {PROJECT_SHARDS} =
**{small:.2f} s** each (the total work of SISA does not depend on S); the last column keeps the
measured shard size ({shard_n} samples, i.e. a {PROJECT_SHARDS // SHARDS}x larger training set), without overhead.
A deletion that hits k shards is the same formula with k in place of S.

| W | rounds ceil(S/W) | digits in {PROJECT_SHARDS} shards (s) | + process-pool overhead (s) | + Ray overhead (s) | {PROJECT_SHARDS} shards of {shard_n} samples (s) |
|---|---|---|---|---|---|
{proj_table}
"""
