"""Linear models for PRU: ridge regression and L2-regularised binary logistic regression.

Parameters are stored as ``theta = [intercept, coef_1 .. coef_d]`` over the design matrix
``[1, X]``; the intercept is not penalised (regulariser ``Lambda = lam * diag(0, 1, ..., 1)``).
Logistic regression is fitted by Newton's method (IRLS) to machine precision, so the exact
retrain the methods are compared with is the true optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from erase.errors import EraseError


def design(X: np.ndarray, fit_intercept: bool = True) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return np.concatenate([np.ones((len(X), 1)), X], axis=1) if fit_intercept else X


def regulariser(d: int, lam: float, fit_intercept: bool = True) -> np.ndarray:
    diag = np.full(d, float(lam))
    if fit_intercept:
        diag[0] = 0.0
    return diag


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


@dataclass
class LinearModel:
    """A fitted ridge (``kind='ridge'``) or logistic (``kind='logistic'``) model."""

    kind: str
    theta: np.ndarray
    lam: float = 1.0
    fit_intercept: bool = True
    # Filled by erase.classifier.pru.prepare (PRU's one-time precomputation); not part of the model.
    cache: object | None = field(default=None, repr=False, compare=False)

    def decision(self, X: np.ndarray) -> np.ndarray:
        return design(X, self.fit_intercept) @ self.theta

    def predict(self, X: np.ndarray) -> np.ndarray:
        s = self.decision(X)
        return s if self.kind == "ridge" else (s > 0).astype(np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.kind != "logistic":
            raise EraseError("predict_proba needs a logistic model; ridge regression has no probabilities")
        p = _sigmoid(self.decision(X))
        return np.stack([1 - p, p], axis=1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """R^2 for ridge, accuracy (percent) for logistic."""
        if self.kind == "ridge":
            y = np.asarray(y, dtype=np.float64)
            resid = y - self.predict(X)
            return float(1 - resid @ resid / max(((y - y.mean()) ** 2).sum(), 1e-300))
        return 100.0 * float(np.mean(self.predict(X) == np.asarray(y)))


def fit_ridge(X: np.ndarray, y: np.ndarray, lam: float = 1.0, fit_intercept: bool = True) -> LinearModel:
    """theta = (X^T X + Lambda)^-1 X^T y."""
    Xd = design(X, fit_intercept)
    A = Xd.T @ Xd + np.diag(regulariser(Xd.shape[1], lam, fit_intercept))
    theta = np.linalg.solve(A, Xd.T @ np.asarray(y, dtype=np.float64))
    return LinearModel("ridge", theta, lam, fit_intercept)


def fit_logistic(
    X: np.ndarray, y: np.ndarray, lam: float = 1.0, fit_intercept: bool = True, tol: float = 1e-12, max_iter: int = 100
) -> LinearModel:
    """Minimise sum_i logloss(y_i, sigmoid(x_i^T theta)) + 1/2 theta^T Lambda theta by Newton steps."""
    y = np.asarray(y, dtype=np.float64)
    if not np.all((y == 0) | (y == 1)):
        raise EraseError("logistic regression needs binary labels 0/1")
    Xd = design(X, fit_intercept)
    reg = regulariser(Xd.shape[1], lam, fit_intercept)
    if lam <= 0:
        raise EraseError(f"logistic regression needs lam > 0 (got {lam}) so that its optimum exists")
    theta = np.zeros(Xd.shape[1])
    for _ in range(max_iter):
        p = _sigmoid(Xd @ theta)
        grad = Xd.T @ (p - y) + reg * theta
        w = p * (1 - p)
        hess = (Xd * w[:, None]).T @ Xd + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol * max(1.0, np.max(np.abs(theta))):
            break
    return LinearModel("logistic", theta, lam, fit_intercept)


def fit_linear(kind: str, X: np.ndarray, y: np.ndarray, lam: float = 1.0, fit_intercept: bool = True) -> LinearModel:
    if kind == "ridge":
        return fit_ridge(X, y, lam, fit_intercept)
    if kind == "logistic":
        return fit_logistic(X, y, lam, fit_intercept)
    raise EraseError(f"unknown linear model kind {kind!r}; use ridge or logistic")
