"""Classifier unlearning benchmark: every method against retraining from scratch.

``run(quick)`` returns the ``## Classifier unlearning`` section of BENCHMARKS.md:

1. digits, class-wise (class 3) and random 10%: Boundary Shrink/Expanding, SalUn, SISA and
   retrain, mean +- std over seeds, with Avg. Gap to retrain and speed-up over retrain;
2. SISA: samples retrained, speed-up, exactness, for single and batched deletions, and the
   expected cost of uniform vs distribution-aware sharding;
3. PRU on ridge (diabetes) and logistic (digits, odd vs even) for k = 1, 10, 100: relative L2
   distance to retrain and the feature injection test, against the Newton baseline;
4. PRU timing on synthetic ridge problems of growing d and k.

Everything runs on one CPU thread (torch and BLAS) so that timings are comparable on a shared
machine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

SEEDS = (0, 1, 2)
TORCH_METHODS = ("boundary-shrink", "boundary-expand", "salun")
GAP_COLS = ("UA", "RA", "TA", "MIA", "AvgGap")


def _sisa_cfg():
    from erase.classifier.sisa import SISAConfig

    # Mean-softmax aggregation: with majority vote the "confidence" is a vote share in
    # {0, 0.2, ..., 1}, on which the confidence-based MIA-Efficacy degenerates.
    return SISAConfig(shards=5, slices=4, aggregation="softmax")


@contextmanager
def _one_thread():
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(old)


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def _digits_tables(seeds) -> tuple[str, str]:
    SISA_CFG = _sisa_cfg()
    from erase.classifier.experiment import prepare_scenario, run_sisa, run_torch_method

    out, sisa_rows = [], []
    for spec in ("class:3", "random:0.1"):
        acc: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            sc = prepare_scenario("digits", spec, seed=seed)
            rows = {}
            for m in TORCH_METHODS:
                r = run_torch_method(sc, m)
                rows[m] = r.rows[m]
            rs = run_sisa(sc, SISA_CFG)
            rows["sisa (S=5, R=4)"] = rs.rows["sisa"] | {"speedup": rs.rows["sisa"]["speedup_vs_retrain"]}
            sisa_rows.append((spec, seed, rs))
            rows["retrain"] = r.rows["retrain"] | {"speedup": 1.0}
            rows["original"] = r.rows["original"]
            for name, vals in rows.items():
                for k, v in vals.items():
                    acc.setdefault(name, {}).setdefault(k, []).append(v)
        cols = list(GAP_COLS) + (["TA_forget", "TA_remain"] if spec.startswith("class") else []) + ["seconds", "speedup"]
        head = "| method | " + " | ".join("time (s)" if c == "seconds" else c for c in cols) + " |"
        lines = [f"**digits, forget {spec}** (mean ± std over seeds {', '.join(map(str, seeds))})", "", head, "|---|" + "---|" * len(cols)]
        for name in ("original", "retrain", *TORCH_METHODS, "sisa (S=5, R=4)"):
            vals = acc[name]
            cells = [(_ms(vals[c]) if c in vals else "–") for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out), sisa_rows


def _sisa_table(sisa_rows, seeds) -> str:
    SISA_CFG = _sisa_cfg()
    from erase.classifier.experiment import prepare_scenario, run_sisa
    from erase.classifier.sisa import distribution_aware_assignment, expected_cost, uniform_assignment

    runs = [(spec, seed, r) for spec, seed, r in sisa_rows]
    for spec in ("k:1", "k:10"):
        for seed in seeds:
            runs.append((spec, seed, run_sisa(prepare_scenario("digits", spec, seed=seed), SISA_CFG)))
    lines = [
        "| deletion | samples retrained / full SISA retrain | shards retrained | time (s) | speed-up vs SISA from scratch | speed-up vs retrain (1 model) | TA after | equal to SISA from scratch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in ("k:1", "k:10", "class:3", "random:0.1"):
        rs = [r for s, _, r in runs if s == spec]
        frac = [r.stats["samples_retrained_fraction"] for r in rs]
        retr = [r.stats["samples_retrained"] for r in rs]
        full = [r.stats["full_retrain_samples"] for r in rs]
        lines.append(
            f"| {spec} | {np.mean(retr):.0f} / {np.mean(full):.0f} ({100 * np.mean(frac):.0f}%) | "
            f"{np.mean([len(r.stats['shards_retrained']) for r in rs]):.1f} / 5 | {_ms([r.rows['sisa']['seconds'] for r in rs])} | "
            f"{_ms([r.rows['sisa']['speedup'] for r in rs])} | {_ms([r.rows['sisa']['speedup_vs_retrain'] for r in rs])} | "
            f"{_ms([r.rows['sisa']['TA'] for r in rs])} | {all(r.stats['exact_match_with_scratch'] for r in rs)} |"
        )
    # distribution-aware sharding: 5% of the points are 100x likelier to be deleted
    n = 1437
    rng = np.random.default_rng(0)
    p = np.full(n, 0.002)
    p[rng.choice(n, n // 20, replace=False)] = 0.2
    uni = expected_cost(uniform_assignment(n, 5, 4, seed=0), p)
    aware = expected_cost(distribution_aware_assignment(p, 5, 4), p)
    dist = (
        "Distribution-aware sharding (N = 1437, S = 5; 5% of the points have deletion probability 0.2, "
        "the rest 0.002; independent requests):\n\n"
        "| sharding | expected shards hit | expected samples in hit shards |\n|---|---|---|\n"
        f"| uniform | {uni['expected_shards_hit']:.2f} | {uni['expected_samples_in_hit_shards']:.0f} |\n"
        f"| distribution-aware | {aware['expected_shards_hit']:.2f} | {aware['expected_samples_in_hit_shards']:.0f} |"
    )
    # accuracy against the number of shards (the price of sharding)
    from erase.classifier.data import load_dataset
    from erase.classifier.experiment import mlp_for
    from erase.classifier.sisa import SISAModel

    data = load_dataset("digits", seed=0)
    acc = []
    for S in (1, 5, 10, 20):
        cfg = SISA_CFG.__class__(shards=S, slices=4, aggregation="softmax")
        model = SISAModel(mlp_for(data), cfg, seed=0).fit(data.X_train, data.y_train)
        acc.append(f"| {S} | {100 * float((model.predict(data.X_test) == data.y_test).mean()):.2f} |")
    by_s = "Test accuracy against the number of shards (digits, seed 0, R = 4):\n\n| S | TA |\n|---|---|\n" + "\n".join(acc)
    return "\n".join(lines) + "\n\n" + dist + "\n\n" + by_s


def _pru_table(seeds) -> str:
    from erase.classifier.experiment import run_pru

    lines = [
        "| data / model | k | L2 to retrain: PRU | L2: Newton | FIT: PRU | FIT: Newton | PRU time (ms) | Newton time (ms) | retrain time (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, label in (("diabetes", "diabetes / ridge (d = 11)"), ("digits", "digits odd/even / logistic (d = 65)")):
        for k in (1, 10, 100):
            rs = [run_pru(ds, f"k:{k}", seed=s) for s in seeds]
            g = lambda row, c: [r.rows[row][c] for r in rs]  # noqa: E731
            lines.append(
                f"| {label} | {k} | {_ms(g('pru', 'L2_to_retrain'))} | {_ms(g('newton', 'L2_to_retrain'))} | "
                f"{_ms(g('pru', 'FIT'))} | {_ms(g('newton', 'FIT'))} | {_ms(np.array(g('pru', 'seconds')) * 1e3)} | "
                f"{_ms(np.array(g('newton', 'seconds')) * 1e3)} | {_ms(np.array(g('retrain', 'seconds')) * 1e3)} |"
            )
    return "\n".join(lines)


def _best_of(fn, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _timing_table(quick: bool) -> str:
    from erase.classifier.linear import fit_ridge
    from erase.classifier.pru import newton_delete, prepare, pru_delete, retrain

    n = 4000
    dims = (100, 400) if quick else (250, 500, 1000, 2000)
    ks = (1, 10, 100)
    rng = np.random.default_rng(0)
    lines = [
        f"| d | k | PRU (ms) | Newton (ms) | retrain (ms) | one-time PRU precompute (ms) | L2 to retrain: PRU |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in dims:
        X = rng.standard_normal((n, d))
        y = X @ rng.standard_normal(d) + rng.standard_normal(n)
        m = fit_ridge(X, y, 1.0)
        t0 = time.perf_counter()
        prepare(m, X, y)
        prep = time.perf_counter() - t0
        for k in ks:
            K = rng.choice(n, k, replace=False)
            t_pru = _best_of(lambda: pru_delete(m, K))
            t_newton = _best_of(lambda: newton_delete(m, X, y, K), 2)
            t_re = _best_of(lambda: retrain(m, X, y, K), 2)
            from erase.classifier.metrics import relative_l2

            l2 = relative_l2(pru_delete(m, K).theta, m.theta, retrain(m, X, y, K).theta)
            lines.append(f"| {d} | {k} | {t_pru * 1e3:.2f} | {t_newton * 1e3:.1f} | {t_re * 1e3:.0f} | {prep * 1e3:.0f} | {l2:.3f} |")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    from erase.benchmarks import machine_description

    seeds = SEEDS[:1] if quick else SEEDS
    t_start = time.perf_counter()
    with _one_thread():
        digits_md, sisa_rows = _digits_tables(seeds)
        sisa_md = _sisa_table(sisa_rows, seeds)
        pru_md = _pru_table(seeds)
        timing_md = _timing_table(quick)
    total = time.perf_counter() - t_start
    return f"""## Classifier unlearning

Machine: {machine_description()}; torch and BLAS limited to **1 thread**; other jobs shared the
CPU, so times are indicative (speed-ups are ratios of wall times measured in the same run).
Generated by `python scripts/benchmark.py --suite classifier{' --quick' if quick else ''}` in {total:.0f} s.

Model: MLP 64-128-10 trained with Adam (lr 3e-3, batch 64, 30 epochs) on the digits training
split (1437 images, pixels in [0, 1]); retrain = the same recipe on D \\ D_f. Metrics in %:
UA = 100 - acc(D_f), RA = acc(D_r), TA = acc(test), MIA = MIA-Efficacy (SVC on true-label
confidence), Avg. Gap = mean |metric - retrain| over UA, RA, TA, MIA; TA_forget / TA_remain =
test accuracy on the forgotten class / the others. Method defaults as in the config dataclasses
(Boundary: SGD lr 0.002, momentum 0.9, 10 epochs, eps 0.1; SalUn: 50% mask, SGD lr 0.013,
10 epochs, batch 64; SISA: 5 shards x 4 slices, 10 epochs per slice, mean-softmax aggregation here, because with
majority vote the confidence-based MIA sees only vote shares). Boundary
Unlearning is designed for class-wise forgetting; its random-10% rows apply it unchanged.
SISA's speed-up here is over retraining the single model; see the SISA table for its own.

{digits_md}

### SISA (digits, S = 5, R = 4)

Samples retrained counts the samples of every retrained slice step (the unit of SISA's
training cost); "full" is a SISA retrain from scratch. Equality is of all constituents'
weights and the aggregated test predictions.

{sisa_md}

### PRU: linear models, deleting k points at once (mean ± std over {len(seeds)} seed(s): split and draw of the k points)

L2 = ||theta_u - theta_retrain|| / ||theta_o - theta_retrain|| (1 = untouched model). FIT = feature
injection test |theta_u[new]| / |theta_o[new]| (0 = the injected feature is gone), fitted without
intercept since on the deleted rows an intercept and the injected column coincide. Newton = one
Newton step on the remaining objective with the cached Hessian (exact for ridge). PRU is the
projection of the exact update onto span{{x_i : i in K}}: exact once k exceeds d (k = 100 on
diabetes); for k < d its quality depends on how isotropic the data are (correlated diabetes
features: poor at k = 1).

{pru_md}

### PRU timing (synthetic ridge, n = 4000 isotropic Gaussian points; best of 3)

PRU's deletion cost is O(k^2 d) given the one-time precompute (Cholesky of A and Z = L^-1 X^T,
O(n d^2), done once after training); the Newton step needs a new d x d solve, O(k d^2 + d^3);
retraining is O(n d^2 + d^3).

{timing_md}
"""
