"""Influence-function baseline and certified removal (Guo et al. 2020) on linear models."""

import math

import numpy as np
import pytest

from erase.classifier.certified import CertifiedConfig, certified_delete, certified_retrain, fit_certified, unit_rows
from erase.classifier.data import linear_view, load_dataset, parse_forget
from erase.classifier.linear import fit_logistic, fit_ridge
from erase.classifier.metrics import relative_l2
from erase.classifier.pru import influence_delete, newton_delete, prepare, retrain
from erase.errors import EraseError


@pytest.fixture(scope="module")
def binary():
    return linear_view(load_dataset("digits", seed=0))


def test_influence_is_first_order_newton_with_the_full_hessian():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 8))
    y = X @ rng.standard_normal(8) + 0.3 * rng.standard_normal(400)
    m = fit_ridge(X, y, 1.0)
    K = np.array([3, 50, 77])
    inf_plain = influence_delete(m, X, y, K)
    prepare(m, X, y)
    inf = influence_delete(m, X, y, K)
    assert np.allclose(inf.theta, inf_plain.theta)  # cached and rebuilt Hessians agree
    # ridge: theta + A^-1 X_K^T r_K, written out
    Xd = np.c_[np.ones(400), X]
    A = Xd.T @ Xd + np.diag([0.0] + [1.0] * 8)
    assert np.allclose(inf.theta, m.theta + np.linalg.solve(A, Xd[K].T @ (Xd[K] @ m.theta - y[K])))
    r = retrain(m, X, y, K)
    l2_inf = relative_l2(inf.theta, m.theta, r.theta)
    assert l2_inf < 0.05  # first order: close for a few points of 400 ...
    assert relative_l2(newton_delete(m, X, y, K).theta, m.theta, r.theta) < 1e-8  # ... Newton with H_remaining is exact


def test_influence_on_logistic_gets_worse_with_k(binary):
    d = binary
    m = fit_logistic(d.X_train, d.y_train, 1.0)
    prepare(m, d.X_train, d.y_train)
    gaps = []
    for k in (1, 100):
        K = parse_forget(f"k:{k}", d, 0).indices
        r = retrain(m, d.X_train, d.y_train, K)
        gaps.append(relative_l2(influence_delete(m, d.X_train, d.y_train, K).theta, m.theta, r.theta))
    assert gaps[0] < 0.2 and gaps[1] > gaps[0]


def test_certified_removal_newton_step_and_bound(binary):
    d = binary
    cfg = CertifiedConfig()
    m = fit_certified(d.X_train, d.y_train, cfg, seed=0)
    Xu, s = unit_rows(d.X_train), 2.0 * d.y_train - 1
    lam_n = cfg.lam * len(s)
    g = Xu.T @ ((1 / (1 + np.exp(-s * (Xu @ m.theta))) - 1) * s) + lam_n * m.theta + m.b
    assert np.linalg.norm(g) < 1e-8  # trained to the perturbed optimum
    K = parse_forget("k:10", d, 0).indices
    u, stats = certified_delete(m, d.X_train, d.y_train, K)
    r = certified_retrain(m, d.X_train, d.y_train, K)
    assert relative_l2(u.theta, m.theta, r.theta) < 0.01
    assert 0 < stats["gradient_residual"] <= stats["residual_bound"]  # the bound holds
    c = math.sqrt(2 * math.log(1.5 / cfg.delta))
    assert stats["epsilon"] == pytest.approx(stats["residual_bound"] * c / cfg.sigma)
    # sequential removals accumulate the bound, and a removed point cannot be removed twice
    more = parse_forget("k:5", d, 1).indices
    more = more[~np.isin(more, K)]
    u2, stats2 = certified_delete(u, d.X_train, d.y_train, more)
    assert stats2["residual_bound"] > stats["residual_bound"] and set(u2.removed) == set(K) | set(more)
    with pytest.raises(EraseError, match="already removed"):
        certified_delete(u2, d.X_train, d.y_train, K[:1])
    # deleting more points at once costs more of the budget
    K100 = parse_forget("k:100", d, 0).indices
    assert certified_delete(m, d.X_train, d.y_train, K100)[1]["residual_bound"] > stats["residual_bound"]


def test_certified_bad_input(binary):
    with pytest.raises(EraseError, match="binary labels"):
        fit_certified(binary.X_train, binary.y_train + 1)
    with pytest.raises(EraseError, match="sigma must be > 0"):
        CertifiedConfig(sigma=0)


def test_run_pru_and_certified_rows():
    from erase.classifier.experiment import run_certified, run_pru

    r = run_pru("diabetes", "k:100", seed=0)
    assert {"newton", "influence", "pru", "retrain"} <= set(r.rows)
    assert r.rows["influence"]["L2_to_retrain"] > r.rows["newton"]["L2_to_retrain"]  # first order vs exact (ridge)
    c = run_certified("digits", "k:10", seed=0)
    assert c.rows["certified"]["L2_to_retrain"] < 0.01
    assert 0 < c.stats["gradient_residual"] <= c.stats["residual_bound"] and c.stats["epsilon"] > 0
