"""Projective Residual Update (PRU) for ridge and logistic regression, plus its baselines.

PRU (Izzo et al., 2021) deletes a set K of k points at once:

1. Exact leave-K-out predictions on K from the hat matrix H = X A^-1 X^T (A = X^T X + Lambda):
   r_i = (y_i - yhat_i) / (1 - H_ii), T_ij = H_ij / (1 - H_ii) (i != j), solve (I - T) e = r,
   yhat'_i = y_i - e_i.
2. Update only inside span{x_i : i in K}: g = sum_i (theta^T x_i - yhat'_i) x_i,
   S = sum_i x_i x_i^T, theta_u = theta - S^+ g, with S^+ through a QR of X_K^T (eigenvalues of
   R R^T below ``eig_tol`` dropped).

Logistic regression uses the same steps on its IRLS (weighted least squares) form at the
optimum: weights w = p(1 - p), working response z = X theta + (y - p) / w, rows scaled by
sqrt(w).

Cost: :func:`prepare` does the one-time O(n d^2) work (Cholesky of A and Z = L^-1 X~^T, the
whitened data, the same size as X) so that any H entry is a dot product Z_i^T Z_j; a deletion
then costs O(k^2 d). :func:`newton_delete` is one Newton step on the remaining objective (a new
d x d Hessian solve, O(d^3); exact for ridge), :func:`influence_delete` the influence-function
update with the full data's Hessian (the PRU paper's main baseline), and :func:`retrain` refits
from scratch. Certified removal (Guo et al. 2020) is in :mod:`erase.classifier.certified`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from erase.classifier.data import retain_indices, validate_indices
from erase.classifier.linear import LinearModel, _sigmoid, design, fit_linear, regulariser
from erase.classifier.options import NON_NEGATIVE, check
from erase.errors import EraseError


@dataclass
class PRUConfig:
    """Projective Residual Update."""

    eig_tol: float = field(default=1e-10, metadata={"help": "eigenvalues of X_K X_K^T below this are dropped (pseudo-inverse)"})

    def __post_init__(self):
        check(self, {"eig_tol": NON_NEGATIVE})


@dataclass
class PRUCache:
    """One-time precomputation for a fitted model on its training data."""

    Xd: np.ndarray  # design matrix [1, X] (n, d)
    sqrt_w: np.ndarray  # IRLS row weights (ones for ridge)
    z: np.ndarray  # (working) response
    chol: np.ndarray  # Cholesky factor L of A = X~^T X~ + Lambda
    Z: np.ndarray  # L^-1 X~^T (d, n): H_ij = Z[:, i] . Z[:, j]
    A: np.ndarray  # X~^T X~ + Lambda (for the Newton baseline)


def check_linear(model) -> LinearModel:
    if not isinstance(model, LinearModel):
        raise EraseError(f"PRU needs a linear model (ridge or logistic regression), got {type(model).__name__}")
    return model


def prepare(model: LinearModel, X: np.ndarray, y: np.ndarray) -> PRUCache:
    """Precompute what PRU needs (stored on ``model.cache`` and returned)."""
    from scipy.linalg import solve_triangular

    check_linear(model)
    Xd = design(X, model.fit_intercept)
    y = np.asarray(y, dtype=np.float64)
    if Xd.ndim != 2 or len(Xd) != len(y) or Xd.shape[1] != len(model.theta):
        raise EraseError(
            f"PRU data do not match the model: X has shape {np.shape(X)}, y has {len(y)} values, "
            f"the model has {len(model.theta)} parameters"
        )
    if model.kind == "logistic" and not np.all((y == 0) | (y == 1)):
        raise EraseError("PRU on logistic regression needs the binary 0/1 labels the model was fitted on")
    if model.kind == "ridge":
        w = np.ones(len(y))
        z = y
    else:
        s = Xd @ model.theta
        p = _sigmoid(s)
        w = np.clip(p * (1 - p), 1e-12, None)
        z = s + (y - p) / w
    sw = np.sqrt(w)
    Xt = Xd * sw[:, None]
    A = Xt.T @ Xt + np.diag(regulariser(Xd.shape[1], model.lam, model.fit_intercept))
    L = np.linalg.cholesky(A)
    Z = solve_triangular(L, Xt.T, lower=True, check_finite=False)
    model.cache = PRUCache(Xd, sw, z, L, Z, A)
    return model.cache


def leave_k_out_predictions(cache: PRUCache, theta: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Exact leave-K-out (working) predictions yhat'_K, in the unweighted response's units."""
    sw = cache.sqrt_w[K]
    Xk = cache.Xd[K] * sw[:, None]
    zk = cache.z[K] * sw
    Zk = cache.Z[:, K]
    H = Zk.T @ Zk  # H_KK, O(k^2 d)
    one_minus = 1.0 - np.diag(H)
    if np.any(one_minus <= 1e-12):
        raise EraseError("a deleted point has leverage 1 (no other point constrains its direction); use lam > 0")
    r = (zk - Xk @ theta) / one_minus
    T = H / one_minus[:, None]
    np.fill_diagonal(T, 0.0)
    try:
        e = np.linalg.solve(np.eye(len(K)) - T, r)
    except np.linalg.LinAlgError:
        raise EraseError("deleting these points leaves a singular least-squares problem; use lam > 0") from None
    return (zk - e) / sw  # back to z units


def projective_update(Xk: np.ndarray, theta: np.ndarray, target: np.ndarray, eig_tol: float = 1e-10) -> np.ndarray:
    """theta - S^+ g with g = X_k^T (X_k theta - target), S = X_k^T X_k, via a QR of X_k^T."""
    g = Xk.T @ (Xk @ theta - target)
    Q, R = np.linalg.qr(Xk.T)  # (d, m), (m, k) with m = min(d, k)
    M = R @ R.T  # Q^T S Q
    evals, evecs = np.linalg.eigh(M)
    keep = evals >= eig_tol
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    return theta - Q @ (inv @ (Q.T @ g))


def pru_delete(model: LinearModel, K, config: PRUConfig | None = None, cache: PRUCache | None = None) -> LinearModel:
    """Return a new model with the points ``K`` (training indices) deleted by PRU."""
    cfg = config or PRUConfig()
    check_linear(model)
    cache = cache or model.cache
    if cache is None:
        raise EraseError("PRU needs the model's training data: call erase.classifier.pru.prepare(model, X, y) first")
    K = validate_indices(K, len(cache.z))
    target = leave_k_out_predictions(cache, model.theta, K)
    sw = cache.sqrt_w[K]
    theta_u = projective_update(cache.Xd[K] * sw[:, None], model.theta, target * sw, cfg.eig_tol)
    return LinearModel(model.kind, theta_u, model.lam, model.fit_intercept)


def newton_delete(model: LinearModel, X: np.ndarray, y: np.ndarray, K) -> LinearModel:
    """Influence/Newton baseline: one Newton step on the objective without K.

    At the full-data optimum the remaining objective's gradient is minus the deleted points'
    gradients, and its Hessian is A - sum_K w_i x_i x_i^T. With :func:`prepare`'s cached A this
    costs O(k d^2 + d^3) (a new d x d solve: the d^3 PRU avoids); without a cache the Hessian is
    rebuilt from the remaining data. Exact for ridge (a quadratic), one step for logistic.
    """
    check_linear(model)
    K = validate_indices(K, len(y))
    theta = model.theta
    cache = model.cache if isinstance(model.cache, PRUCache) and len(model.cache.z) == len(y) else None
    Xk = design(np.asarray(X)[K], model.fit_intercept)
    yk = np.asarray(y, dtype=np.float64)[K]
    sk = Xk @ theta
    if model.kind == "ridge":
        wk, resid = np.ones(len(K)), sk - yk
    else:
        pk = _sigmoid(sk)
        wk, resid = pk * (1 - pk), pk - yk
    grad = -(Xk.T @ resid)  # gradient of the remaining objective at theta
    if cache is not None:
        hess = cache.A - (Xk * wk[:, None]).T @ Xk
    else:
        R = retain_indices(len(y), K)
        Xr = design(np.asarray(X)[R], model.fit_intercept)
        reg = regulariser(Xr.shape[1], model.lam, model.fit_intercept)
        if model.kind == "ridge":
            wr = np.ones(len(R))
        else:
            pr = _sigmoid(Xr @ theta)
            wr = pr * (1 - pr)
        hess = (Xr * wr[:, None]).T @ Xr + np.diag(reg)
    return LinearModel(model.kind, theta - np.linalg.solve(hess, grad), model.lam, model.fit_intercept)


def influence_delete(model: LinearModel, X: np.ndarray, y: np.ndarray, K) -> LinearModel:
    """Influence-function update (Koh & Liang; the PRU paper's main baseline): theta + H_full^-1 sum_K grad l_i.

    Unlike :func:`newton_delete`, the Hessian is the full data's (the deleted points included),
    as influence functions use it: one d x d solve with the cached A, O(d^3); exact only to first
    order in the deleted points' weight, so it drifts from retrain as k grows.
    """
    check_linear(model)
    K = validate_indices(K, len(y))
    theta = model.theta
    Xk = design(np.asarray(X)[K], model.fit_intercept)
    yk = np.asarray(y, dtype=np.float64)[K]
    sk = Xk @ theta
    resid = sk - yk if model.kind == "ridge" else _sigmoid(sk) - yk
    grad_k = Xk.T @ resid  # sum of the deleted points' loss gradients
    cache = model.cache if isinstance(model.cache, PRUCache) and len(model.cache.z) == len(y) else None
    if cache is not None:
        hess = cache.A
    else:
        Xd = design(np.asarray(X), model.fit_intercept)
        w = np.ones(len(y)) if model.kind == "ridge" else (lambda p: p * (1 - p))(_sigmoid(Xd @ theta))
        hess = (Xd * w[:, None]).T @ Xd + np.diag(regulariser(Xd.shape[1], model.lam, model.fit_intercept))
    return LinearModel(model.kind, theta + np.linalg.solve(hess, grad_k), model.lam, model.fit_intercept)


def retrain(model: LinearModel, X: np.ndarray, y: np.ndarray, K) -> LinearModel:
    """Exact retrain on the remaining points with the same hyperparameters."""
    check_linear(model)
    K = validate_indices(K, len(y))
    R = retain_indices(len(y), K)
    return fit_linear(model.kind, np.asarray(X)[R], np.asarray(y)[R], model.lam, model.fit_intercept)
