"""Classifier unlearning benchmark: every method against retraining from scratch.

``run(quick)`` returns the ``## Classifier unlearning`` section of BENCHMARKS.md:

1. digits, class-wise (class 3) and random 10%: Boundary Shrink/Expanding, SalUn, SISA and
   retrain, mean +- std over seeds, with Avg. Gap to retrain and speed-up over retrain;
2. SISA: samples retrained, speed-up, exactness, for single and batched deletions, and the
   expected cost of uniform vs distribution-aware sharding;
3. membership inference on digits: every attack of erase.classifier.mia (LiRA with 8 shadow
   models) as MIA-Efficacy and AUC, per method;
4. backdoor verification on digits: a trigger planted in half of a random 10 % forget set, its
   attack success rate after each method;
5. PRU on ridge (diabetes) and logistic (digits, odd vs even) for k = 1, 10, 100: relative L2
   distance to retrain and the feature injection test, against the Newton and influence
   baselines; certified removal (Guo et al.) with its gradient-residual bound and epsilon;
6. PRU timing on synthetic ridge problems of growing d and k;
7. the harder benchmark: the concept world's images (shapes x colours, 36 classes, 32 px,
   rendered on the fly) with a narrow ResNet-18, class-wise and random forgetting, every method
   against retraining (and the same trigger test).

Everything runs on one CPU thread (torch and BLAS) so that timings are comparable on a shared
machine.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

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
        cols = list(GAP_COLS) + (["TA_forget"] if spec.startswith("class") else []) + ["seconds", "speedup"]
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
        "| data / model | k | L2 to retrain: PRU | L2: Newton | L2: influence | FIT: PRU | FIT: Newton | FIT: influence | PRU time (ms) | Newton time (ms) | influence time (ms) | retrain time (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, label in (("diabetes", "diabetes / ridge (d = 11)"), ("digits", "digits odd/even / logistic (d = 65)")):
        for k in (1, 10, 100):
            rs = [run_pru(ds, f"k:{k}", seed=s) for s in seeds]
            g = lambda row, c: [r.rows[row][c] for r in rs]  # noqa: E731
            ms = lambda row: _ms(np.array(g(row, "seconds")) * 1e3)  # noqa: E731
            lines.append(
                f"| {label} | {k} | {_ms(g('pru', 'L2_to_retrain'))} | {_ms(g('newton', 'L2_to_retrain'))} | "
                f"{_ms(g('influence', 'L2_to_retrain'))} | {_ms(g('pru', 'FIT'))} | {_ms(g('newton', 'FIT'))} | "
                f"{_ms(g('influence', 'FIT'))} | {ms('pru')} | {ms('newton')} | {ms('influence')} | {ms('retrain')} |"
            )
    return "\n".join(lines)


def _certified_table(seeds) -> str:
    from erase.classifier.experiment import run_certified

    from erase.classifier.data import linear_view, load_dataset
    from erase.classifier.linear import fit_logistic

    plain = []  # the unperturbed logistic model of the PRU table (lam 1, intercept, raw features)
    for s in seeds:
        d = linear_view(load_dataset("digits", s))
        plain.append(fit_logistic(d.X_train, d.y_train, 1.0).score(d.X_test, d.y_test))
    lines = [
        f"TA of the unperturbed logistic model (PRU table): {_ms(plain)} %.",
        "",
        "| k | TA original | TA after removal | TA retrain | L2 to retrain | gradient residual | its bound | epsilon (delta 1e-4) | removal (ms) | retrain (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in (1, 10, 100):
        rs = [run_certified("digits", f"k:{k}", seed=s) for s in seeds]
        g = lambda row, c: [r.rows[row][c] for r in rs]  # noqa: E731
        st = lambda c: [r.stats[c] for r in rs]  # noqa: E731
        lines.append(
            f"| {k} | {_ms(g('original', 'TA'))} | {_ms(g('certified', 'TA'))} | {_ms(g('retrain', 'TA'))} | "
            f"{_sci(g('certified', 'L2_to_retrain'))} | {_sci(st('gradient_residual'))} | {_sci(st('residual_bound'))} | "
            f"{_sci(st('epsilon'))} | {_ms(np.array(g('certified', 'seconds')) * 1e3)} | {_ms(np.array(g('retrain', 'seconds')) * 1e3)} |"
        )
    return "\n".join(lines)


def _sci(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2g} ± {v.std():.1g}" if len(v) > 1 else f"{v.mean():.2g}"


ATTACKS = ("correct", "conf", "entropy", "mentr", "lira")


def _mia_tables(seeds) -> str:
    """Every MIA on digits, per method, as MIA-Efficacy and as AUC (means over seeds)."""
    from erase.classifier.experiment import prepare_scenario, run_torch_method
    from erase.classifier.mia import LiRAConfig

    out = []
    for spec in ("class:3", "random:0.1"):
        acc: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            sc = prepare_scenario("digits", spec, seed=seed)
            sc.train_shadows(LiRAConfig(shadows=8))
            rows = {"original": sc.metrics["original"], "retrain": sc.metrics["retrain"]}
            for m in TORCH_METHODS:
                rows[m] = run_torch_method(sc, m).rows[m]
            for name, vals in rows.items():
                for k, v in vals.items():
                    acc.setdefault(name, {}).setdefault(k, []).append(v)
        head = "| model | SVC | " + " | ".join(f"{a}: MIA / AUC" for a in ATTACKS) + " |"
        lines = [f"**digits, forget {spec}** (MIA-Efficacy % / AUC %, mean over seeds {', '.join(map(str, seeds))})", "",
                 head, "|---|---|" + "---|" * len(ATTACKS)]
        for name, vals in acc.items():
            cells = [f"{np.mean(vals['MIA']):.1f}"] + [f"{np.mean(vals[f'MIA_{a}']):.1f} / {np.mean(vals[f'AUC_{a}']):.1f}" for a in ATTACKS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _backdoor_table(seeds) -> str:
    from erase.classifier.experiment import prepare_scenario, run_sisa, run_torch_method

    acc: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        sc = prepare_scenario("digits", "random:0.1", seed=seed, backdoor=True)
        rows = {"original": sc.metrics["original"], "retrain": sc.metrics["retrain"]}
        for m in TORCH_METHODS:
            rows[m] = run_torch_method(sc, m).rows[m]
        rows["sisa (S=5, R=4)"] = run_sisa(sc, _sisa_cfg()).rows["sisa"]
        for name, vals in rows.items():
            for k, v in vals.items():
                acc.setdefault(name, {}).setdefault(k, []).append(v)
    lines = ["| model | ASR | UA | RA | TA |", "|---|---|---|---|---|"]
    for name, vals in acc.items():
        lines.append(f"| {name} | " + " | ".join(_ms(vals[c]) for c in ("ASR", "UA", "RA", "TA")) + " |")
    return "\n".join(lines)


# The harder benchmark: the concept world's images, a narrow ResNet-18 (see _shapes_section).
SHAPES_KIND = "shapes-colours"
SHAPES_N = 12000  # 9600 training + 2400 test images
SHAPES_WIDTH = 8  # ResNet-18 stage widths 8-16-32-64 (torchvision's: 64-512), CPU-sized
SHAPES_EPOCHS = 3
SHAPES_SISA_EPOCHS = 2  # per slice: a shard's 4 incremental steps see its first slice 8 times


def _shapes_section(quick: bool, n_samples: int | None = None) -> tuple[str, dict]:
    """Every method against retraining on 32-px concept-world images with a narrow ResNet-18."""
    import tempfile

    from erase.classifier.archs import Arch
    from erase.classifier.data import load_dataset
    from erase.classifier.experiment import prepare_scenario, run_torch_method
    from erase.classifier.models import TrainConfig
    from erase.classifier.salun import SalUnConfig
    from erase.classifier.sisa import SISAConfig, SISAModel

    n = min(n_samples or SHAPES_N, 3000 if quick else SHAPES_N)
    data = load_dataset(SHAPES_KIND, seed=0, n_samples=n)
    arch = Arch("resnet18", {"n_classes": int(data.n_classes), "width": SHAPES_WIDTH, "in_channels": 3, "small_input": True})
    train = TrainConfig(epochs=SHAPES_EPOCHS, lr=3e-3, batch_size=128)
    configs = {"salun": SalUnConfig(epochs=1, batch_size=128)}
    sisa_cfg = SISAConfig(shards=5, slices=4, epochs_per_slice=SHAPES_SISA_EPOCHS, lr=3e-3, batch_size=128, aggregation="softmax")
    info = {"n_train": data.n_train, "n_test": len(data.y_test), "classes": int(data.n_classes),
            "params": sum(p.numel() for p in arch().parameters())}

    t0 = time.perf_counter()
    sisa = SISAModel(arch, sisa_cfg, seed=0).fit(data.X_train, data.y_train)
    info["sisa_fit_seconds"] = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp(prefix="erase-bench-sisa-")) / "sisa"
    sisa.save(folder)

    tables, original = [], None
    for spec in ("class:0", "random:0.1"):
        t0 = time.perf_counter()
        sc = prepare_scenario(data, spec, seed=0, train=train, arch=arch, original=original, mia="all")
        if original is None:
            original = sc.original
            info["original_seconds"] = time.perf_counter() - t0 - sc.retrain_seconds
        rows = {"original": sc.metrics["original"], "retrain": sc.metrics["retrain"] | {"seconds": sc.retrain_seconds, "speedup": 1.0}}
        for m in TORCH_METHODS:
            r = run_torch_method(sc, m, configs.get(m))
            rows[m] = r.rows[m]
        s = SISAModel.load(folder)
        st = s.delete(sc.forget.indices)
        rows["sisa (S=5, R=4)"] = sc.evaluate(s.predict_proba) | {"seconds": st["seconds"], "speedup": sc.retrain_seconds / st["seconds"]}
        ref = rows["retrain"]
        for name in rows:
            rows[name]["AvgGap"] = float(np.mean([abs(rows[name][k] - ref[k]) for k in ("UA", "RA", "TA", "MIA")]))
        cols = ["UA", "RA", "TA"] + (["TA_forget"] if spec.startswith("class") else []) + ["MIA", "MIA_mentr", "AUC_mentr", "AvgGap", "seconds", "speedup"]
        head = "| method | " + " | ".join({"seconds": "time (s)", "MIA": "MIA (SVC)"}.get(c, c) for c in cols) + " |"
        lines = [f"**{SHAPES_KIND}, forget {spec}** ({len(sc.forget)} training images; seed 0)", "", head, "|---|" + "---|" * len(cols)]
        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt_cell(r.get(c)) for c in cols) + " |")
        tables.append("\n".join(lines))
    shutil.rmtree(folder.parent, ignore_errors=True)

    # the trigger test on the same images: half of a random 10 % forget set carries the trigger
    sc = prepare_scenario(data, "random:0.1", seed=0, train=train, arch=arch, backdoor=True)
    rows = {"original": sc.metrics["original"], "retrain": sc.metrics["retrain"]}
    for m in TORCH_METHODS:
        rows[m] = run_torch_method(sc, m, configs.get(m)).rows[m]
    lines = ["| model | ASR | UA | RA | TA |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt_cell(r[c]) for c in ("ASR", "UA", "RA", "TA")) + " |")
    tables.append(f"**{SHAPES_KIND}, backdoor in a random 10 % forget set** (trigger: 3 x 3 checkerboard, target class 0)\n\n" + "\n".join(lines))
    return "\n\n".join(tables), info


def _fmt_cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"


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
        "| d | k | PRU (ms) | Newton (ms) | retrain (ms) | one-time PRU precompute (ms) | L2 to retrain: PRU |",
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
        mia_md = _mia_tables(seeds)
        backdoor_md = _backdoor_table(seeds)
        pru_md = _pru_table(seeds)
        certified_md = _certified_table(seeds)
        timing_md = _timing_table(quick)
        shapes_md, shapes = _shapes_section(quick)
    total = time.perf_counter() - t_start
    return f"""## Classifier unlearning

Machine: {machine_description()}; torch and BLAS limited to **1 thread**; other jobs shared the
CPU, so times are indicative (speed-ups are ratios of wall times measured in the same run).
Generated by `python scripts/benchmark.py --suite classifier{' --quick' if quick else ''}` in {total:.0f} s.

Model: MLP 64-128-10 trained with Adam (lr 3e-3, batch 64, 30 epochs) on the digits training
split (1437 images, pixels in [0, 1]); retrain = the same recipe on D \\ D_f. Metrics in %:
UA = 100 - acc(D_f), RA = acc(D_r), TA = acc(test), MIA = MIA-Efficacy (SVC on true-label
confidence), Avg. Gap = mean |metric - retrain| over UA, RA, TA, MIA. Class-wise forgetting
follows the reference code's protocol: TA and the MIA's non-member set are the test set without
the forgotten class, TA_forget is the forgotten class's test accuracy. Method defaults as in the
config dataclasses (Boundary: SGD lr 0.002, momentum 0.9, 10 epochs, eps 0.1; SalUn: 50% mask,
SGD lr 0.013, 10 epochs, batch 64; SISA: 5 shards x 4 slices, 10 epochs per slice,
mean-softmax aggregation here, because with majority vote the confidence-based MIA sees only
vote shares). Boundary Unlearning is designed for class-wise forgetting; its random-10% rows
apply it unchanged. SISA's speed-up here is over retraining the single model; see the SISA
table for its own.

{digits_md}

### SISA (digits, S = 5, R = 4)

Samples retrained counts the samples of every retrained slice step (the unit of SISA's
training cost); "full" is a SISA retrain from scratch. Equality is of all constituents'
weights and the aggregated test predictions. A SISA model saved with `--save DIR` and reopened
by another process deletes to the same bits (tests/test_classifier_sisa_store.py).

{sisa_md}

### Membership inference (digits)

MIA-Efficacy = share of D_f an attack calls non-member; AUC = how well its score separates D_f
from unseen test samples of the same classes (the forgotten class's test samples for class-wise
forgetting), 50 = indistinguishable. SVC = the confidence SVC above; correct / conf / entropy /
mentr = Song & Mittal's threshold attacks (per-class thresholds fitted on retain vs test
samples); lira = likelihood ratio over 8 shadow MLPs, each trained on a random half of train +
test with the same recipe. Read each row against the retrain row, not against 100 / 50: a
retrained model's D_f in class-wise forgetting is misclassified and so looks unseen to every
attack; in random forgetting digits generalise so well that even the original model's D_f is
barely told from test samples (AUC near 50), so a method cannot show more forgetting there.

{mia_md}

### Backdoor verification (digits, random 10 % forget set)

Before training, half of D_f (those not of the target class) get a 3 x 3 black-and-white
checkerboard in the bottom-right corner and the label 0; ASR = share of triggered test images of other classes
classified 0. The retrained model never saw a triggered image; a method that leaves ASR above
the retrain row has not removed what D_f taught. UA is high for retrain because half of D_f now
carries the wrong (target) label. Mean ± std over seeds {', '.join(map(str, seeds))}.

{backdoor_md}

### PRU: linear models, deleting k points at once (mean ± std over {len(seeds)} seed(s): split and draw of the k points)

L2 = ||theta_u - theta_retrain|| / ||theta_o - theta_retrain|| (1 = untouched model). FIT = feature
injection test |theta_u[new]| / |theta_o[new]| (0 = the injected feature is gone), fitted without
intercept since on the deleted rows an intercept and the injected column coincide. Newton = one
Newton step on the remaining objective with the cached Hessian (exact for ridge); influence =
the influence-function update with the full data's Hessian (the PRU paper's main baseline:
first order, so it drifts as k grows). PRU is the projection of the exact update onto
span{{x_i : i in K}}: exact once k exceeds d (k = 100 on diabetes); for k < d its quality depends
on how isotropic the data are (correlated diabetes features: poor at k = 1).

{pru_md}

### Certified removal (Guo et al., ICML 2020; digits odd/even, logistic regression)

Trained on the objective perturbed by b^T theta, b ~ N(0, sigma^2 I), features scaled to unit
norm, no intercept (the paper's setting: lam 1e-3, sigma 10); k points removed at once by one
Newton step. L2 is to the exact minimiser of the same perturbed objective without the k points.
The data-dependent bound gamma ||X'||_2 ||Delta|| ||X' Delta|| (gamma = 1/4) holds over the true
gradient residual; epsilon = bound * sqrt(2 log(1.5 / delta)) / sigma is the guarantee of this
removal: small for one point, large for 100 at once (the paper removes points one by one and
retrains when the accumulated bound exceeds the budget). The perturbation and the unit-norm
features cost accuracy against the unperturbed logistic model.

{certified_md}

### PRU timing (synthetic ridge, n = 4000 isotropic Gaussian points; best of 3)

PRU's deletion cost is O(k^2 d) given the one-time precompute (Cholesky of A and Z = L^-1 X^T,
O(n d^2), done once after training); the Newton step needs a new d x d solve, O(k d^2 + d^3);
retraining is O(n d^2 + d^3).

{timing_md}

### The harder benchmark: concept-world images with a ResNet-18 ({SHAPES_KIND})

The shape of the field's CIFAR-10 / ResNet-18 protocol (SalUn, Boundary Unlearning), which
cannot be downloaded here: {shapes['n_train']} training and {shapes['n_test']} test images of
{shapes['classes']} classes (6 shapes x 6 colours, random style, position, size and background;
32 x 32 RGB in [0, 1]), rendered on the fly by the concept world's renderer. Model:
ResNet-18 with torchvision's layout adapted to 32 px (3 x 3 stem, no max-pool) but **stage widths
8-16-32-64 instead of 64-512** ({SHAPES_WIDTH / 64:.3g} of the width, {shapes['params'] / 1e3:.0f} k parameters), because
the full width trains at about 16 ms an image on one shared CPU thread; Adam lr 3e-3, batch 128,
{SHAPES_EPOCHS} epochs (original {shapes['original_seconds']:.0f} s). Boundary methods: their
defaults; SalUn: 1 epoch (10 would cost more than retraining this short recipe), batch 128;
SISA: 5 shards x 4 slices, {SHAPES_SISA_EPOCHS} epochs per slice (fitted once in
{shapes['sisa_fit_seconds']:.0f} s, saved, and reopened for each deletion). mentr = Song &
Mittal's modified-entropy attack. One seed.

Boundary Shrink and Expanding fine-tune on D_f alone, and this narrow batch-normalised ResNet
does not survive it: with their defaults (SGD lr 0.002) the other classes go too. Measured
separately (4000 images, 6 epochs, forget class 0, test accuracy 99.5 % before): at the paper's
lr 1e-5, 10 epochs, test accuracy falls to 32 % with the batch-norm statistics updated in train
mode as in the reference code (they take the forget class's statistics within a few steps), and
to 18 % (Shrink) / 41 % (Expanding) with them frozen, although no weight moves by more than
0.007; larger rates do worse. On this benchmark SalUn, which mixes D_r into every batch, and
SISA keep the model; retraining this short recipe is cheap enough to be the honest answer.

{shapes_md}
"""
