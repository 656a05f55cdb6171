"""PRU on ridge and logistic regression: exact leave-k-out residuals, projection, L2, FIT."""

import numpy as np
import pytest

from erase.classifier import run_method
from erase.classifier.data import load_dataset, linear_view, parse_forget
from erase.classifier.linear import design, fit_logistic, fit_ridge
from erase.classifier.metrics import feature_injection_ratio, inject_feature, relative_l2
from erase.classifier.pru import leave_k_out_predictions, newton_delete, prepare, pru_delete, retrain
from erase.errors import EraseError


@pytest.fixture(scope="module")
def diabetes():
    return load_dataset("diabetes", seed=0)


def _ids(data, k, seed=0):
    return parse_forget(f"k:{k}", data, seed).indices


@pytest.mark.parametrize("k", [1, 10, 100])
def test_leave_k_out_predictions_are_exact(diabetes, k):
    d = diabetes
    m = fit_ridge(d.X_train, d.y_train, 1.0)
    cache = prepare(m, d.X_train, d.y_train)
    K = _ids(d, k)
    r = retrain(m, d.X_train, d.y_train, K)
    assert np.allclose(leave_k_out_predictions(cache, m.theta, K), design(d.X_train[K]) @ r.theta, atol=1e-8)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_pru_is_the_projection_of_the_exact_update(diabetes, k):
    d = diabetes
    m = fit_ridge(d.X_train, d.y_train, 1.0)
    prepare(m, d.X_train, d.y_train)
    K = _ids(d, k)
    r = retrain(m, d.X_train, d.y_train, K)
    u = pru_delete(m, K)
    Q, _ = np.linalg.qr(design(d.X_train[K]).T)
    delta = r.theta - m.theta
    assert np.allclose(u.theta - m.theta, Q @ (Q.T @ delta), atol=1e-8 * np.linalg.norm(delta) + 1e-10)
    ratio = relative_l2(u.theta, m.theta, r.theta)
    assert ratio < 1.0  # strictly closer to retrain than the untouched model
    if k > d.n_features + 1:  # the deleted rows span the whole space: PRU is exact
        assert ratio < 1e-8


@pytest.mark.parametrize("k", [1, 10, 100])
def test_ridge_l2_well_below_untouched_on_synthetic(k):
    rng = np.random.default_rng(0)
    n, dim = 3000, 60
    X = rng.standard_normal((n, dim))
    y = X @ rng.standard_normal(dim) + 0.5 * rng.standard_normal(n)
    m = fit_ridge(X, y, 1.0)
    prepare(m, X, y)
    K = rng.choice(n, k, replace=False)
    ratio = relative_l2(pru_delete(m, K).theta, m.theta, retrain(m, X, y, K).theta)
    assert ratio < 0.3, ratio


@pytest.mark.parametrize("k", [10, 100])
def test_feature_injection_removed(diabetes, k):
    d = diabetes
    K = _ids(d, k)
    Xi, yi = inject_feature(d.X_train, d.y_train - d.y_train.mean(), K, "regression")
    m = fit_ridge(Xi, yi, 1.0, fit_intercept=False)
    prepare(m, Xi, yi)
    assert abs(m.theta[-1]) > 10  # the model did lean on the injected feature
    assert feature_injection_ratio(pru_delete(m, K).theta, m.theta) < 0.01


def test_logistic_pru_improves_on_untouched():
    data = linear_view(load_dataset("digits", seed=0))
    m = fit_logistic(data.X_train, data.y_train, 1.0)
    prepare(m, data.X_train, data.y_train)
    for k in (1, 10, 100):
        K = _ids(data, k)
        r = retrain(m, data.X_train, data.y_train, K)
        assert relative_l2(pru_delete(m, K).theta, m.theta, r.theta) < 1.0  # IRLS form: approximate, no projection guarantee
        nt = newton_delete(m, data.X_train, data.y_train, K)
        assert relative_l2(nt.theta, m.theta, r.theta) < 0.1
        cache, m.cache = m.cache, None  # the uncached Newton step (Hessian rebuilt) agrees
        assert np.allclose(newton_delete(m, data.X_train, data.y_train, K).theta, nt.theta, atol=1e-8)
        m.cache = cache


def test_pru_rejects_non_linear_models(diabetes):
    from erase.classifier.models import MLP

    with pytest.raises(EraseError, match="PRU needs a linear model.*MLP"):
        run_method("pru", MLP(10, 2), diabetes, [0, 1])
    with pytest.raises(EraseError, match="prepare"):
        pru_delete(fit_ridge(diabetes.X_train, diabetes.y_train), [0])
