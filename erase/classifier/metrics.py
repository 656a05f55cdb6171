"""Verification metrics for classifier unlearning (one place, used by tests, CLI, app, benchmark).

Classification (all in percent):
- UA = 100 * (1 - acc(D_f)), RA = acc(D_r), TA = acc(test). For class-wise forgetting TA is
  the accuracy on the test set without the forgotten class, as in the reference code (SalUn's
  ``unlearn`` evaluation, Boundary Unlearning), and ``TA_forget`` the forgotten class's.
- MIA = MIA-Efficacy: an SVC (rbf, C=3) is trained on the true-label confidence of |test|
  retain samples (members, label 1) vs the test samples (non-members, label 0; for class-wise
  forgetting the test set without the forgotten class) and applied to D_f; MIA-Efficacy is the
  share of D_f predicted non-member. ``mia="all"`` adds the attacks of :mod:`erase.classifier.mia`.
- Avg. Gap = mean |metric - metric_retrain| over UA, RA, TA, MIA.

Linear models: relative L2 distance ||theta_u - theta_r|| / ||theta_o - theta_r|| and the
feature injection test (a feature that is non-zero only on the deleted points; after deletion
its weight should be ~0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

GAP_KEYS = ("UA", "RA", "TA", "MIA")


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    """Accuracy in percent (nan on an empty set)."""
    y = np.asarray(y)
    if len(y) == 0:
        return float("nan")
    return 100.0 * float(np.mean(np.argmax(proba, axis=1) == y))


def true_label_confidence(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(proba)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]


def mia_efficacy(
    retain_proba: np.ndarray,
    retain_y: np.ndarray,
    test_proba: np.ndarray,
    test_y: np.ndarray,
    forget_proba: np.ndarray,
    forget_y: np.ndarray,
    seed: int = 0,
) -> float:
    """Confidence-based MIA-Efficacy in percent: share of D_f the attack calls non-member."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n_members = min(len(test_y), len(retain_y))
    pick = rng.choice(len(retain_y), size=n_members, replace=False)
    members = true_label_confidence(retain_proba[pick], retain_y[pick])
    non_members = true_label_confidence(test_proba, test_y)
    feats = np.concatenate([members, non_members]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    clf = SVC(C=3, kernel="rbf", gamma="auto").fit(feats, labels)
    pred = clf.predict(true_label_confidence(forget_proba, forget_y).reshape(-1, 1))
    return 100.0 * float(np.mean(pred == 0))


def classification_metrics(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    data,
    forget_idx: np.ndarray,
    forget_class: int | None = None,
    seed: int = 0,
    mia: str = "svc",
    shadows=None,
) -> dict[str, float]:
    """UA, RA, TA, MIA (and TA_forget for class-wise forgetting), in percent.

    ``mia='all'`` adds MIA_/AUC_ of the threshold attacks and, given ``shadows``
    (:func:`erase.classifier.mia.train_shadows`), of LiRA.
    """
    from erase.classifier.data import retain_indices

    forget_idx = np.asarray(forget_idx, dtype=np.int64)
    retain_idx = retain_indices(data.n_train, forget_idx)
    p_train = predict_proba(data.X_train)
    p_test = predict_proba(data.X_test)
    yf, yr = data.y_train[forget_idx], data.y_train[retain_idx]
    keep = np.ones(len(data.y_test), dtype=bool) if forget_class is None else data.y_test != forget_class
    out = {
        "UA": 100.0 - accuracy(p_train[forget_idx], yf),
        "RA": accuracy(p_train[retain_idx], yr),
        "TA": accuracy(p_test[keep], data.y_test[keep]),
        "MIA": mia_efficacy(p_train[retain_idx], yr, p_test[keep], data.y_test[keep], p_train[forget_idx], yf, seed=seed),
    }
    if forget_class is not None:
        out["TA_forget"] = accuracy(p_test[~keep], data.y_test[~keep])
    if mia == "all":
        from erase.classifier.mia import mia_suite

        out |= mia_suite(p_train, p_test, data, forget_idx, retain_idx, forget_class, shadows)
    elif mia != "svc":
        from erase.errors import EraseError

        raise EraseError(f"unknown MIA selection {mia!r}; use svc or all")
    return out


def avg_gap(metrics: dict[str, float], reference: dict[str, float], keys: Sequence[str] = GAP_KEYS) -> float:
    """Mean absolute difference to the retrained model's metrics (percentage points)."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in keys]))


def relative_l2(theta_u: np.ndarray, theta_o: np.ndarray, theta_r: np.ndarray) -> float:
    """||theta_u - theta_r|| / ||theta_o - theta_r||: 0 = retrain reached, 1 = no better than untouched."""
    denom = float(np.linalg.norm(np.ravel(theta_o) - np.ravel(theta_r)))
    num = float(np.linalg.norm(np.ravel(theta_u) - np.ravel(theta_r)))
    return num / denom if denom > 0 else (0.0 if num == 0 else float("inf"))


def inject_feature(X: np.ndarray, y: np.ndarray, forget_idx: np.ndarray, task: str, scale: float = 1.0):
    """Append a column that is ``scale`` on the points to delete and 0 elsewhere, and make it predictive.

    Regression: the deleted points' targets are shifted by 3 standard deviations; binary
    classification: the deleted points are labelled 1. The model then leans on the new feature,
    so only a real deletion takes its weight back to 0.
    """
    X2 = np.concatenate([X, np.zeros((len(X), 1), dtype=X.dtype)], axis=1)
    X2[forget_idx, -1] = scale
    y2 = np.array(y, copy=True)
    if task == "regression":
        y2[forget_idx] = y2[forget_idx] + 3.0 * float(np.std(y))
    else:
        y2[forget_idx] = 1
    return X2, y2


def feature_injection_ratio(theta_u: np.ndarray, theta_o: np.ndarray, feature: int = -1) -> float:
    """|theta_u[new feature]| / |theta_o[new feature]|: 0 means the injected signal is fully removed."""
    return float(abs(np.ravel(theta_u)[feature]) / max(abs(np.ravel(theta_o)[feature]), 1e-300))
