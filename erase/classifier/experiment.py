"""One unlearning experiment end to end: data -> original model -> method and retrain -> metrics.

Used by ``scripts/unlearn.py`` and the benchmark. :func:`prepare_scenario` trains the original
torch model and the retrained reference once, so that several methods can be compared on the
same scenario; :func:`run_experiment` does everything for one method.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from erase.classifier import METHODS, get_method, run_method
from erase.classifier.data import Dataset, ForgetSet, as_forget_set, linear_view, load_dataset, parse_forget, retain_indices
from erase.classifier.linear import LinearModel, fit_linear
from erase.classifier.metrics import (
    GAP_KEYS,
    avg_gap,
    classification_metrics,
    feature_injection_ratio,
    inject_feature,
    relative_l2,
)
from erase.classifier.models import TrainConfig, predict_proba, save_model, save_tensors, seeded, train_classifier
from erase.classifier.pru import influence_delete, newton_delete, prepare, pru_delete
from erase.classifier.pru import retrain as linear_retrain
from erase.classifier.retrain import RetrainConfig
from erase.classifier.sisa import SISAConfig, SISAModel
from erase.errors import EraseError

RIDGE_LAMBDA = 1.0  # ridge / logistic L2 strength of the linear models PRU is applied to
HIDDEN = (128,)  # the bundled MLP's hidden layer(s)


@dataclass
class Scenario:
    """A dataset, a forget set, the original torch model and the retrained reference.

    ``arch`` builds fresh models of the original's architecture (None: a user's model, which
    retraining re-initialises in place); ``train_fn(model, X, y)`` replaces the project's training
    recipe ``train``. ``mia='all'`` evaluates every MIA of :mod:`erase.classifier.mia` (LiRA once
    :meth:`train_shadows` has run).
    """

    data: Dataset
    forget: ForgetSet
    seed: int
    train: TrainConfig
    original: torch.nn.Module | None = None
    retrained: torch.nn.Module | None = None
    retrain_seconds: float = float("nan")
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    arch: object | None = None
    train_fn: object | None = None
    head: str | None = None
    mia: str = "svc"
    shadows: object | None = None
    backdoor: object | None = None  # a BackdoorConfig: the data carry its trigger, rows get ASR

    def evaluate(self, predict) -> dict[str, float]:
        out = classification_metrics(predict, self.data, self.forget.indices, self.forget.forget_class, seed=self.seed,
                                     mia=self.mia, shadows=self.shadows)
        if self.backdoor is not None:
            from erase.classifier.backdoor import attack_success_rate

            out["ASR"] = attack_success_rate(predict, self.data, self.backdoor)
        return out

    def fit_model(self, X, y, seed: int) -> torch.nn.Module:
        """A fresh model of the scenario's architecture trained on (X, y) with its recipe."""
        if self.arch is None:
            from erase.classifier.retrain import fresh_copy

            model = fresh_copy(self.original, seed)
        else:
            model = seeded(self.arch, seed)
        if self.train_fn is None:
            return train_classifier(model, X, y, self.train, seed=seed)
        out = self.train_fn(model, X, y)
        return (out if out is not None else model).eval()

    def train_shadows(self, config=None) -> None:
        """LiRA's shadow models (the pool: training + test set), then re-evaluate original and retrain."""
        from erase.classifier.mia import train_shadows

        d = self.data
        X_pool = np.concatenate([d.X_train, d.X_test])
        y_pool = np.concatenate([d.y_train, d.y_test])

        def fit(X, y, seed):
            model = self.fit_model(X, y, seed)
            return lambda Z: predict_proba(model, Z)

        self.shadows = train_shadows(fit, X_pool, y_pool, d.n_train, config, seed=self.seed)
        self.mia = "all"
        self.metrics["original"] = self.evaluate(lambda X: predict_proba(self.original, X))
        self.metrics["retrain"] = self.evaluate(lambda X: predict_proba(self.retrained, X))


@dataclass
class ExperimentResult:
    method: str
    dataset: str
    forget: str
    seed: int
    n_forget: int
    rows: dict[str, dict[str, float]]  # model name -> metric -> value
    stats: dict
    models: dict[str, object] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """JSON-ready dict (NaN becomes null)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "models"}
        return _clean(d) | {"models": list(self.models)}


def mlp_for(data: Dataset):
    """The bundled MLP sized for ``data`` (an Arch: buildable here and in another process)."""
    from erase.classifier.archs import arch_for_data

    return arch_for_data("mlp", data.X_train.shape[1:], int(data.n_classes), hidden=list(HIDDEN))


def prepare_scenario(
    dataset: str | Dataset, forget, seed: int = 0, train: TrainConfig | None = None, *,
    arch=None, original: torch.nn.Module | None = None, train_fn=None, head: str | None = None, mia: str = "svc",
    backdoor=None,
) -> Scenario:
    """Load data, take the forget set, train (or take) the original model and retrain the reference (timed).

    ``forget``: a spec (``class:3``), a ForgetSet or training indices. ``arch``: an
    :class:`~erase.classifier.archs.Arch` or a name (``mlp``, ``resnet18``, ``module:callable``;
    default the bundled MLP) for the original and the retrained model; ``original``: your
    trained model instead (retraining then re-initialises a copy of it). ``backdoor``: a
    :class:`~erase.classifier.backdoor.BackdoorConfig` (or True): plant its trigger in part of D_f
    before training; every row then reports the trigger's attack success rate ``ASR``.
    """
    from erase.classifier.archs import Arch, arch_for_data

    data = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    if not data.is_classification:
        raise EraseError(f"the torch classifier methods need a classification dataset; {data.name!r} is {data.task} (use pru)")
    forget = as_forget_set(forget, data, seed)
    if backdoor is not None and backdoor is not False:
        from erase.classifier.backdoor import BackdoorConfig, plant

        if original is not None:
            raise EraseError("backdoor verification trains the original model on the poisoned data; it cannot use a given model")
        backdoor = BackdoorConfig() if backdoor is True else backdoor
        data, _ = plant(data, forget.indices, backdoor, seed)
    else:
        backdoor = None
    if arch is None and original is not None:
        arch = getattr(original, "erase_arch", None)
    if isinstance(arch, str):
        arch = arch_for_data(arch, data.X_train.shape[1:], int(data.n_classes))
    elif arch is None and original is None:
        arch = mlp_for(data)
    elif arch is not None and not isinstance(arch, Arch):
        raise EraseError(f"arch must be an Arch or a name, got {type(arch).__name__}")
    sc = Scenario(data, forget, seed, train or TrainConfig(), arch=arch, train_fn=train_fn, head=head, mia=mia, backdoor=backdoor)
    sc.original = original if original is not None else sc.fit_model(data.X_train, data.y_train, seed)
    res = run_method("retrain", sc.original, data, forget, RetrainConfig(sc.train), seed=seed, head=head,
                     factory=arch, train_fn=train_fn)
    sc.retrained, sc.retrain_seconds = res.model, res.seconds
    sc.metrics["original"] = sc.evaluate(lambda X: predict_proba(sc.original, X))
    sc.metrics["retrain"] = sc.evaluate(lambda X: predict_proba(sc.retrained, X))
    return sc


def _with_gap(m: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    return m | {"AvgGap": avg_gap(m, ref, GAP_KEYS)}


def run_torch_method(sc: Scenario, method: str, config=None) -> ExperimentResult:
    ref = sc.metrics["retrain"]
    rows = {"original": _with_gap(sc.metrics["original"], ref), "retrain": _with_gap(ref, ref) | {"seconds": sc.retrain_seconds}}
    stats: dict = {}
    models: dict[str, object] = {"original": sc.original, "retrain": sc.retrained}
    if method != "retrain":
        res = run_method(method, sc.original, sc.data, sc.forget, config, seed=sc.seed, head=sc.head)
        m = sc.evaluate(lambda X: predict_proba(res.model, X))
        rows[method] = _with_gap(m, ref) | {"seconds": res.seconds, "speedup": sc.retrain_seconds / res.seconds}
        stats.update(res.stats)
        models[method] = res.model
    return ExperimentResult(method, sc.data.name, sc.forget.spec, sc.seed, len(sc.forget), rows, stats, models)


def run_sisa(sc: Scenario, config: SISAConfig | None = None, deletion_probabilities=None) -> ExperimentResult:
    """SISA: fit on D, delete D_f; compare with SISA from scratch on D_r (same assignment) and retrain.

    ``deletion_probabilities`` (one per training sample) are needed by ``sharding='distribution'``.
    """
    cfg = config or SISAConfig()
    data, ids, ref = sc.data, sc.forget.indices, sc.metrics["retrain"]
    if sc.arch is None:
        raise EraseError("sisa trains its own shard models: give the architecture (arch=... / --arch), not only trained weights")
    factory = sc.arch
    sisa = SISAModel(factory, cfg, sc.seed).fit(data.X_train, data.y_train, deletion_probabilities=deletion_probabilities)
    before = sc.evaluate(sisa.predict_proba)
    res = run_method("sisa", sisa, data, sc.forget, cfg, seed=sc.seed)
    after = sc.evaluate(sisa.predict_proba)
    keep = retain_indices(data.n_train, ids)
    scratch_cfg = dataclasses.replace(cfg, checkpoint_dir=None)
    t0 = time.perf_counter()
    scratch = SISAModel(factory, scratch_cfg, sc.seed).fit(data.X_train[keep], data.y_train[keep], assignment=sisa.assignment.subset(keep))
    scratch_seconds = time.perf_counter() - t0
    sw, tw = sisa.state_dict(), scratch.state_dict()
    same = bool(
        sw.keys() == tw.keys()
        and all(torch.equal(sw[k], tw[k]) for k in sw)
        and np.array_equal(scratch.predict_proba(data.X_test), sisa.predict_proba(data.X_test))
    )
    rows = {
        "original": _with_gap(sc.metrics["original"], ref),
        "retrain": _with_gap(ref, ref) | {"seconds": sc.retrain_seconds},
        "sisa (before)": _with_gap(before, ref),
        "sisa-scratch": _with_gap(sc.evaluate(scratch.predict_proba), ref) | {"seconds": scratch_seconds},
        "sisa": _with_gap(after, ref)
        | {
            "seconds": res.seconds,
            "speedup": scratch_seconds / res.seconds,
            "speedup_vs_retrain": sc.retrain_seconds / res.seconds,
        },
    }
    stats = res.stats | {"exact_match_with_scratch": same, "shards": cfg.shards, "slices": cfg.slices}
    stats["samples_retrained_fraction"] = stats["samples_retrained"] / max(stats["full_retrain_samples"], 1)
    return ExperimentResult("sisa", data.name, sc.forget.spec, sc.seed, len(ids), rows, stats, {"sisa": sisa})


def run_pru(dataset: str | Dataset, forget_spec: str, seed: int = 0, config=None, lam: float = RIDGE_LAMBDA) -> ExperimentResult:
    """PRU vs the Newton/influence baseline vs exact retrain, plus the feature injection test."""
    base = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    forget = parse_forget(forget_spec, base, seed)
    data = linear_view(base)
    ids = forget.indices
    kind = "ridge" if data.task == "regression" else "logistic"
    X, y = data.X_train, data.y_train
    theta_o = fit_linear(kind, X, y, lam)
    t0 = time.perf_counter()
    prepare(theta_o, X, y)
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = linear_retrain(theta_o, X, y, ids)
    t_retrain = time.perf_counter() - t0
    res = run_method("pru", theta_o, data, forget, config, seed=seed)
    t0 = time.perf_counter()
    nt = newton_delete(theta_o, X, y, ids)
    t_newton = time.perf_counter() - t0
    t0 = time.perf_counter()
    inf = influence_delete(theta_o, X, y, ids)
    t_influence = time.perf_counter() - t0

    # Feature injection test, without intercept: on the deleted rows an intercept column and the
    # injected all-ones column coincide, so no method working from those rows could tell them apart.
    Xi, yi = inject_feature(X, y, ids, data.task)
    yi_c = yi - yi[np.setdiff1d(np.arange(len(yi)), ids)].mean() if data.task == "regression" else yi
    inj = fit_linear(kind, Xi, yi_c, lam, fit_intercept=False)
    prepare(inj, Xi, yi_c)
    fit_pru = feature_injection_ratio(pru_delete(inj, ids).theta, inj.theta)
    fit_newton = feature_injection_ratio(newton_delete(inj, Xi, yi_c, ids).theta, inj.theta)
    fit_influence = feature_injection_ratio(influence_delete(inj, Xi, yi_c, ids).theta, inj.theta)
    fit_retrain = feature_injection_ratio(linear_retrain(inj, Xi, yi_c, ids).theta, inj.theta)

    score = "R2" if kind == "ridge" else "TA"

    def row(model: LinearModel, secs, fit_ratio):
        out = {"L2_to_retrain": relative_l2(model.theta, theta_o.theta, r.theta), score: model.score(data.X_test, data.y_test), "FIT": fit_ratio}
        if secs is not None:
            out |= {"seconds": secs, "speedup": t_retrain / secs}
        return out

    rows = {
        "original": row(theta_o, None, 1.0),
        "retrain": row(r, t_retrain, fit_retrain),
        "newton": row(nt, t_newton, fit_newton),
        "influence": row(inf, t_influence, fit_influence),
        "pru": row(res.model, res.seconds, fit_pru),
    }
    stats = {"model": kind, "lambda": lam, "prepare_seconds": prep_s, "k": len(ids), "d": int(X.shape[1]) + 1}
    if kind == "logistic":
        stats["task"] = "binary: odd vs even class id"
    return ExperimentResult("pru", base.name, forget_spec, seed, len(ids), rows, stats, {"pru": res.model, "retrain": r, "original": theta_o})


def run_certified(dataset: str | Dataset, forget_spec, seed: int = 0, config=None) -> ExperimentResult:
    """Certified removal (Guo et al. 2020) on the binary view of a dataset vs retraining the same perturbed objective."""
    from erase.classifier.certified import CertifiedConfig, certified_delete, certified_retrain, fit_certified

    cfg = config or CertifiedConfig()
    base = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    forget = as_forget_set(forget_spec, base, seed)
    data = linear_view(base)
    if not data.is_classification or data.X_train.ndim != 2:
        raise EraseError("certified removal needs a classification dataset of feature vectors")
    X, y, ids = data.X_train, data.y_train, forget.indices
    t0 = time.perf_counter()
    original = fit_certified(X, y, cfg, seed)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    removed, stats = certified_delete(original, X, y, ids)
    t_remove = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = certified_retrain(original, X, y, ids)
    t_retrain = time.perf_counter() - t0
    rows = {
        "original": {"TA": original.score(data.X_test, data.y_test), "L2_to_retrain": 1.0, "seconds": t_fit},
        "retrain": {"TA": ref.score(data.X_test, data.y_test), "L2_to_retrain": 0.0, "seconds": t_retrain},
        "certified": {"TA": removed.score(data.X_test, data.y_test),
                      "L2_to_retrain": relative_l2(removed.theta, original.theta, ref.theta),
                      "seconds": t_remove, "speedup": t_retrain / t_remove},
    }
    stats |= {"lam": cfg.lam, "sigma": cfg.sigma, "task": "binary: odd vs even class id" if base.n_classes and base.n_classes > 2 else "binary"}
    return ExperimentResult("certified", base.name, forget.spec, seed, len(ids), rows, stats, {"certified": removed})


def read_probabilities(path: str | Path, n: int) -> np.ndarray:
    """Per-sample deletion probabilities from a text file (one number per line or whitespace separated)."""
    p = Path(path)
    if not p.is_file():
        raise EraseError(f"deletion probabilities file not found: {path}")
    try:
        values = np.array([float(t) for t in p.read_text().replace(",", " ").split()])
    except ValueError:
        raise EraseError(f"deletion probabilities file {path} holds a non-number") from None
    if len(values) != n:
        raise EraseError(f"deletion probabilities file {path} has {len(values)} values for {n} training samples")
    return values


def fit_sisa_only(dataset: str | Dataset, seed: int = 0, config: SISAConfig | None = None,
                  deletion_probabilities: str | None = None, arch=None):
    """Train a SISA model without deleting anything -> (model, data, summary line)."""
    cfg = config or SISAConfig()
    data = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    if not data.is_classification:
        raise EraseError(f"sisa needs a classification dataset; {data.name!r} is {data.task}")
    probs = read_probabilities(deletion_probabilities, data.n_train) if deletion_probabilities else None
    if probs is not None and cfg.sharding != "distribution":
        raise EraseError("deletion probabilities are only used by SISA with sharding=distribution (--set sharding=distribution)")
    t0 = time.perf_counter()
    sisa = SISAModel(arch or mlp_for(data), cfg, seed).fit(data.X_train, data.y_train, deletion_probabilities=probs)
    ta = 100.0 * float((sisa.predict(data.X_test) == data.y_test).mean())
    line = (f"sisa on {data.name}: {cfg.shards} shards x {cfg.slices} slices, {data.n_train} training samples, "
            f"test accuracy {ta:.2f} %, {time.perf_counter() - t0:.1f} s")
    return sisa, data, line


def run_experiment(
    method: str, dataset: str | Dataset, forget_spec, seed: int = 0, config=None, deletion_probabilities: str | None = None,
    *, arch=None, original: torch.nn.Module | None = None, head: str | None = None, train: TrainConfig | None = None,
    backdoor=None, mia: str = "svc",
) -> ExperimentResult:
    """Run one method on one scenario (see :func:`prepare_scenario` for the keyword options).

    ``dataset``: a built-in name or a loaded Dataset (your data, :mod:`erase.classifier.sources`).
    ``deletion_probabilities``: a file, for SISA's distribution-aware sharding.
    """
    spec = get_method(method)
    if deletion_probabilities is not None and spec.model_kind != "sisa":
        raise EraseError(f"deletion probabilities are a SISA option; {method} does not use them")
    if spec.model_kind == "linear":
        if original is not None or arch is not None or backdoor:
            raise EraseError("pru fits its own linear model: --model, --arch and --backdoor do not apply")
        return run_pru(dataset, forget_spec, seed, config)
    data = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    if not data.is_classification:
        raise EraseError(f"{method} needs a classification dataset; {data.name!r} is {data.task} (use pru)")
    probs = None
    if spec.model_kind == "sisa":  # checked before any training
        probs = read_probabilities(deletion_probabilities, data.n_train) if deletion_probabilities else None
        sharding = (config or SISAConfig()).sharding
        if probs is not None and sharding != "distribution":
            raise EraseError("deletion probabilities are only used by SISA with sharding=distribution (--set sharding=distribution)")
        if original is not None and arch is None:
            arch = getattr(original, "erase_arch", None)
    # retrain's config is the training recipe, shared by the original model it is compared with
    if method == "retrain" and config is not None:
        train = config.train
    sc = prepare_scenario(data, forget_spec, seed, train=train, arch=arch, original=original, head=head,
                          backdoor=backdoor, mia=mia)
    if spec.model_kind == "sisa":
        return run_sisa(sc, config, probs)
    return run_torch_method(sc, method, config)


# ---- reporting ---------------------------------------------------------------------------------

COLUMNS = ["UA", "RA", "TA", "MIA", "TA_forget", "ASR", "AvgGap", "L2_to_retrain", "R2", "FIT", "seconds", "speedup",
           *(f"{k}_{a}" for a in ("correct", "conf", "entropy", "mentr", "lira") for k in ("MIA", "AUC"))]


def _fmt(v) -> str:
    if isinstance(v, float):
        if np.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}"
    return str(v)


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    cols = [c for c in (columns or COLUMNS) if any(c in r for r in rows.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r[c]) if c in r else "" for c in cols) + " |")
    return "\n".join(lines)


def save_outputs(result: ExperimentResult, out: str | Path, arch=None) -> list[Path]:
    """metrics.json and the unlearned model as safetensors, written into a temporary folder renamed to ``out``."""
    import shutil
    import uuid

    from erase.files import replace_path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    names = []
    try:
        model = result.models.get(result.method)
        meta = {"method": result.method, "dataset": result.dataset, "forget": result.forget, "seed": result.seed}
        if isinstance(model, torch.nn.Module):
            save_model(tmp / "model.safetensors", model, meta, arch=arch or getattr(model, "erase_arch", None))
        elif isinstance(model, SISAModel):
            save_tensors(tmp / "model.safetensors", model.state_dict(), meta | {"model_class": "SISAModel"})
        elif isinstance(model, LinearModel):
            save_tensors(tmp / "model.safetensors", {"theta": torch.as_tensor(model.theta)}, meta | {"model_class": f"LinearModel/{model.kind}"})
        (tmp / "metrics.json").write_text(json.dumps(result.to_json(), indent=2, default=_json_default) + "\n")
        names = sorted(p.name for p in tmp.iterdir())
        replace_path(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return [out / n for n in names]


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = ["run_experiment", "prepare_scenario", "run_torch_method", "run_sisa", "run_pru", "markdown_table", "save_outputs", "METHODS"]
