"""Certified removal for L2-regularised logistic regression (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Training minimises the perturbed objective (labels y in {-1, +1}, features scaled to unit norm,
no intercept, as in the paper's code)::

    L(theta; D) = sum_i log(1 + exp(-y_i theta^T x_i)) + lam * n / 2 * ||theta||^2 + b^T theta,
    b ~ N(0, sigma^2 I)

Removing a set K (n' = n - k points left) is one Newton step on the remaining objective L':
``Delta = H'^-1 (sum_{i in K} grad l_i(theta) + lam * k * theta)``, ``theta_- = theta + Delta``,
with H' the Hessian of L' at theta. Its gradient residual ``||grad L'(theta_-)||`` is bounded by
the data-dependent ``beta = gamma * ||X'||_2 * ||Delta|| * ||X' Delta||`` (gamma = 1/4, the
Lipschitz constant of the logistic loss's second derivative), accumulated over successive
removals. The removal is (epsilon, delta)-certified with ``epsilon = beta * c / sigma``,
``c = sqrt(2 log(1.5 / delta))``; once the accumulated beta exceeds the budget
``sigma * epsilon / c`` for the epsilon you want, retrain.

Defaults are the paper's MNIST setting (lam 1e-3, sigma 10, delta 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from erase.classifier.options import POSITIVE, check
from erase.errors import EraseError

GAMMA = 0.25


@dataclass
class CertifiedConfig:
    """Certified removal (objective perturbation + Newton step)."""

    lam: float = field(default=1e-3, metadata={"help": "L2 strength per sample (objective term lam * n / 2 * ||theta||^2); paper 1e-3"})
    sigma: float = field(default=10.0, metadata={"help": "standard deviation of the objective perturbation b; paper 10"})
    delta: float = field(default=1e-4, metadata={"help": "delta of the (epsilon, delta) guarantee; paper 1e-4"})

    def __post_init__(self):
        check(self, {"lam": POSITIVE, "sigma": POSITIVE, "delta": (float, 0.0, 1.0, False, False)})


@dataclass
class CertifiedModel:
    theta: np.ndarray
    b: np.ndarray
    config: CertifiedConfig
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    beta: float = 0.0  # accumulated data-dependent bound on the gradient residual

    @property
    def epsilon(self) -> float:
        """epsilon of the (epsilon, delta) guarantee for everything removed so far."""
        return self.beta * math.sqrt(2 * math.log(1.5 / self.config.delta)) / self.config.sigma

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (unit_rows(X) @ self.theta > 0).astype(np.int64)

    def score(self, X: np.ndarray, y01: np.ndarray) -> float:
        return 100.0 * float(np.mean(self.predict(X) == np.asarray(y01)))


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (the paper's ||x|| <= 1 assumption)."""
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _signed(y01: np.ndarray) -> np.ndarray:
    y01 = np.asarray(y01)
    if not np.all((y01 == 0) | (y01 == 1)):
        raise EraseError("certified removal is for binary labels 0/1")
    return 2.0 * y01 - 1.0


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _grad(theta, X, s, lam_n, b):
    return X.T @ ((_sigmoid(s * (X @ theta)) - 1.0) * s) + lam_n * theta + b


def _hessian(theta, X, s, lam_n):
    z = _sigmoid(s * (X @ theta))
    return (X * (z * (1 - z))[:, None]).T @ X + lam_n * np.eye(X.shape[1])


def _minimise(X, s, lam_n, b, tol=1e-10, max_iter=100) -> np.ndarray:
    theta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        step = np.linalg.solve(_hessian(theta, X, s, lam_n), _grad(theta, X, s, lam_n, b))
        theta -= step
        if np.linalg.norm(step) < tol * max(1.0, np.linalg.norm(theta)):
            break
    return theta


def fit_certified(X: np.ndarray, y01: np.ndarray, config: CertifiedConfig | None = None, seed: int = 0,
                  b: np.ndarray | None = None) -> CertifiedModel:
    """Train on the perturbed objective (b drawn from ``seed`` unless given)."""
    cfg = config or CertifiedConfig()
    Xu, s = unit_rows(X), _signed(y01)
    if b is None:
        b = np.random.default_rng([seed, 99]).normal(0.0, cfg.sigma, Xu.shape[1])
    return CertifiedModel(_minimise(Xu, s, cfg.lam * len(s), b), b, cfg)


def certified_delete(model: CertifiedModel, X: np.ndarray, y01: np.ndarray, K) -> tuple[CertifiedModel, dict]:
    """Remove training points ``K`` (positions in X, which still holds every point) by one Newton step."""
    from erase.classifier.data import validate_indices

    cfg = model.config
    Xu, s = unit_rows(X), _signed(y01)
    K = validate_indices(K, len(s))
    if np.intersect1d(K, model.removed).size:
        raise EraseError(f"point {int(np.intersect1d(K, model.removed)[0])} was already removed from this model")
    gone = np.union1d(model.removed, K)
    keep = np.setdiff1d(np.arange(len(s)), gone)
    Xr, sr = Xu[keep], s[keep]
    theta = model.theta
    grad_k = Xu[K].T @ ((_sigmoid(s[K] * (Xu[K] @ theta)) - 1.0) * s[K]) + cfg.lam * len(K) * theta
    delta = np.linalg.solve(_hessian(theta, Xr, sr, cfg.lam * len(keep)), grad_k)
    new = theta + delta
    spec = float(np.linalg.norm(Xr, 2))
    beta = GAMMA * spec * float(np.linalg.norm(delta)) * float(np.linalg.norm(Xr @ delta))
    residual = float(np.linalg.norm(_grad(new, Xr, sr, cfg.lam * len(keep), model.b)))
    out = CertifiedModel(new, model.b, cfg, gone, model.beta + beta)
    return out, {"gradient_residual": residual, "residual_bound": out.beta, "epsilon": out.epsilon, "delta": cfg.delta}


def certified_retrain(model: CertifiedModel, X: np.ndarray, y01: np.ndarray, K) -> CertifiedModel:
    """Exact minimiser of the same perturbed objective (same b) on the remaining points."""
    keep = np.setdiff1d(np.arange(len(y01)), np.union1d(model.removed, np.asarray(K, dtype=np.int64)))
    Xu, s = unit_rows(np.asarray(X)[keep]), _signed(np.asarray(y01)[keep])
    return CertifiedModel(_minimise(Xu, s, model.config.lam * len(keep), model.b), model.b, model.config,
                          np.setdiff1d(np.arange(len(y01)), keep))
