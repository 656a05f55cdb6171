"""Membership-inference attacks for unlearning verification, each reported two ways.

An attack gives every example a membership score (higher = looks more like a training member).

- ``svc``: the confidence SVC of the SalUn/`unlearn` code (rbf, C=3, on the true-label
  confidence; see :func:`erase.classifier.metrics.mia_efficacy`);
- ``correct``, ``conf``, ``entropy``, ``mentr``: Song & Mittal's threshold attacks (USENIX
  Security 2021) on prediction correctness, true-label confidence, negated entropy and negated
  modified entropy ``Mentr = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``; thresholds per
  class, chosen to best separate members (retain samples) from non-members (held-out samples),
  a global threshold for classes that lack either;
- ``lira``: a likelihood-ratio attack (Carlini et al., S&P 2022) with shadow models, each
  trained on a random half of the pool (training + test set) with the target's recipe: the
  statistic ``phi = log p_y - log(1 - p_y)`` of every pool example under the shadows that saw it
  (IN) and those that did not (OUT) is fitted by two Gaussians with a shared per-split variance
  (the paper's choice for few shadows); score = log N(phi; IN) - log N(phi; OUT).

Outputs per attack: ``MIA_<attack>`` = MIA-Efficacy, the share (%) of D_f the attack calls
non-member (LiRA: likelihood ratio < 1), and ``AUC_<attack>`` = the ROC AUC (%) of the score
separating D_f from unseen samples of the same classes (the test set; for class-wise forgetting
the forgotten class's test samples). Compare both with the retrained model's, not with 100 / 50.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from erase.classifier.options import check

THRESHOLD_ATTACKS = ("correct", "conf", "entropy", "mentr")
_EPS = 1e-30


def _py(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(proba)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]


def attack_scores(name: str, proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership score of a threshold attack (higher = more member-like)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if name == "correct":
        return (proba.argmax(1) == y).astype(np.float64)
    if name == "conf":
        return _py(proba, y)
    if name == "entropy":
        return np.sum(proba * np.log(np.maximum(proba, _EPS)), axis=1)
    if name == "mentr":
        p_y = _py(proba, y)
        log_1m = np.log(np.maximum(1.0 - proba, _EPS))
        others = np.sum(proba * log_1m, axis=1) - p_y * log_1m[np.arange(len(y)), y]
        mentr = -(1.0 - p_y) * np.log(np.maximum(p_y, _EPS)) - others
        return -mentr
    raise ValueError(f"unknown attack {name!r}")


def _best_threshold(members: np.ndarray, non_members: np.ndarray) -> float:
    """The threshold t maximising the accuracy of 'member iff score >= t' (balanced classes)."""
    values = np.unique(np.concatenate([members, non_members]))
    cands = np.concatenate([values, [values[-1] + 1.0]])
    m_sorted, n_sorted = np.sort(members), np.sort(non_members)
    tpr = 1.0 - np.searchsorted(m_sorted, cands, side="left") / len(m_sorted)
    tnr = np.searchsorted(n_sorted, cands, side="left") / len(n_sorted)
    return float(cands[int(np.argmax(tpr + tnr))])


def fit_thresholds(m_scores, m_y, n_scores, n_y, n_classes: int) -> np.ndarray:
    """Per-class thresholds (global where a class has no member or no non-member)."""
    glob = _best_threshold(m_scores, n_scores)
    out = np.full(n_classes, glob)
    for c in range(n_classes):
        mc, nc = m_scores[m_y == c], n_scores[n_y == c]
        if len(mc) and len(nc):
            out[c] = _best_threshold(mc, nc)
    return out


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie), in percent (nan if either side is empty)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return 100.0 * float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@dataclass
class LiRAConfig:
    """Shadow models for the likelihood-ratio attack."""

    shadows: int = field(default=8, metadata={"help": "shadow models, each trained on a random half of train + test (LiRA paper: 64-256; a few suffice offline here)"})

    def __post_init__(self):
        check(self, {"shadows": (int, 2, None, True, False)})


@dataclass
class Shadows:
    """phi of every pool example under every shadow, and which shadows trained on it."""

    phi: np.ndarray  # (n_shadows, n_pool)
    inside: np.ndarray  # bool (n_shadows, n_pool)
    n_train: int  # pool = training set (first n_train) then test set

    def fit(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Per-example IN and OUT means, and the global IN / OUT standard deviations."""
        inside, phi = self.inside, self.phi
        n_in, n_out = inside.sum(0), (~inside).sum(0)
        mu_in = np.where(n_in > 0, (phi * inside).sum(0) / np.maximum(n_in, 1), np.nan)
        mu_out = np.where(n_out > 0, (phi * ~inside).sum(0) / np.maximum(n_out, 1), np.nan)
        dev_in = (phi - mu_in)[inside & (n_in > 1)]
        dev_out = (phi - mu_out)[~inside & (n_out > 1)]
        sd_in = float(np.std(dev_in)) if dev_in.size else 1.0
        sd_out = float(np.std(dev_out)) if dev_out.size else 1.0
        # fall back to the other side's mean where an example had no IN (or OUT) shadow
        mu_in = np.where(np.isnan(mu_in), np.nanmean(mu_in), mu_in)
        mu_out = np.where(np.isnan(mu_out), np.nanmean(mu_out), mu_out)
        return mu_in, mu_out, max(sd_in, 1e-6), max(sd_out, 1e-6)


def lira_phi(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(_py(proba, y).astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def train_shadows(train_fn: Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]],
                  X_pool, y_pool, n_train: int, config: LiRAConfig | None = None, seed: int = 0) -> Shadows:
    """``train_fn(X, y, seed) -> predict_proba`` trains one shadow with the target's recipe."""
    cfg = config or LiRAConfig()
    n = len(y_pool)
    rng = np.random.default_rng([seed, 4242])
    inside = np.zeros((cfg.shadows, n), dtype=bool)
    # each example is IN for exactly half of the shadows (balanced, as in the LiRA code)
    order = np.argsort(rng.random((cfg.shadows, n)), axis=0)
    inside[order[: cfg.shadows // 2], np.arange(n)] = True
    phi = np.empty((cfg.shadows, n))
    for k in range(cfg.shadows):
        idx = np.flatnonzero(inside[k])
        predict = train_fn(X_pool[idx], y_pool[idx], int(rng.integers(2**31)))
        phi[k] = lira_phi(predict(X_pool), y_pool)
    return Shadows(phi, inside, n_train)


def lira_scores(shadows: Shadows, phi_target: np.ndarray, pool_idx: np.ndarray) -> np.ndarray:
    """log likelihood ratio IN vs OUT for the pool examples ``pool_idx`` given the target's phi."""
    mu_in, mu_out, sd_in, sd_out = shadows.fit()
    i = np.asarray(pool_idx, dtype=np.int64)
    z_in = (phi_target - mu_in[i]) / sd_in
    z_out = (phi_target - mu_out[i]) / sd_out
    return (-0.5 * z_in**2 - np.log(sd_in)) - (-0.5 * z_out**2 - np.log(sd_out))


def mia_suite(
    p_train: np.ndarray,
    p_test: np.ndarray,
    data,
    forget_idx: np.ndarray,
    retain_idx: np.ndarray,
    forget_class: int | None = None,
    shadows: Shadows | None = None,
) -> dict[str, float]:
    """MIA_<attack> (efficacy, %) and AUC_<attack> (%) for the threshold attacks and, with shadows, LiRA."""
    y_tr, y_te = np.asarray(data.y_train), np.asarray(data.y_test)
    yf, yr = y_tr[forget_idx], y_tr[retain_idx]
    if forget_class is None:
        non_mem = np.arange(len(y_te))  # held-out samples the thresholds are fitted on
        reference = non_mem  # unseen samples of D_f's classes
    else:
        non_mem = np.flatnonzero(y_te != forget_class)
        reference = np.flatnonzero(y_te == forget_class)
    K = int(max(y_tr.max(), y_te.max())) + 1
    out: dict[str, float] = {}
    for name in THRESHOLD_ATTACKS:
        s_ret = attack_scores(name, p_train[retain_idx], yr)
        s_non = attack_scores(name, p_test[non_mem], y_te[non_mem])
        s_f = attack_scores(name, p_train[forget_idx], yf)
        thr = fit_thresholds(s_ret, yr, s_non, y_te[non_mem], K)
        out[f"MIA_{name}"] = 100.0 * float(np.mean(s_f < thr[yf]))
        out[f"AUC_{name}"] = roc_auc(s_f, attack_scores(name, p_test[reference], y_te[reference]))
    if shadows is not None:
        s_f = lira_scores(shadows, lira_phi(p_train[forget_idx], yf), forget_idx)
        s_ref = lira_scores(shadows, lira_phi(p_test[reference], y_te[reference]), shadows.n_train + reference)
        out["MIA_lira"] = 100.0 * float(np.mean(s_f < 0))
        out["AUC_lira"] = roc_auc(s_f, s_ref)
    return out
