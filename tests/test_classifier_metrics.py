"""Verification metrics: UA/RA/TA as defined, MIA-Efficacy's direction and members, Avg. Gap."""

import numpy as np
import pytest

from erase.classifier.data import Dataset
from erase.classifier.metrics import avg_gap, classification_metrics, mia_efficacy


def _onehot_conf(y, conf, k=3):
    """Probabilities with ``conf`` on the true class and the rest spread over the others."""
    y = np.asarray(y)
    p = np.full((len(y), k), 0.0)
    p[:, :] = ((1 - np.asarray(conf)) / (k - 1))[:, None]
    p[np.arange(len(y)), y] = conf
    return p


def test_mia_efficacy_direction():
    rng = np.random.default_rng(0)
    yr, yt = rng.integers(0, 3, 400), rng.integers(0, 3, 100)
    retain = _onehot_conf(yr, rng.uniform(0.95, 1.0, 400))  # members: confident
    test = _onehot_conf(yt, rng.uniform(0.3, 0.6, 100))  # non-members: unsure
    yf = rng.integers(0, 3, 50)
    member_like = _onehot_conf(yf, rng.uniform(0.95, 1.0, 50))
    unseen_like = _onehot_conf(yf, rng.uniform(0.3, 0.6, 50))
    assert mia_efficacy(retain, yr, test, yt, member_like, yf) <= 5.0
    assert mia_efficacy(retain, yr, test, yt, unseen_like, yf) >= 95.0


def test_classification_metrics_definitions():
    # 10 training points: 0..3 forgotten; 4 test points of which class 2 is the forgotten class
    y_train = np.array([2, 2, 2, 2, 0, 1, 0, 1, 0, 1])
    y_test = np.array([2, 2, 0, 1])
    X_train = np.arange(10, dtype=np.float32)[:, None]
    X_test = np.arange(10, 14, dtype=np.float32)[:, None]
    data = Dataset("toy", "classification", X_train, y_train, X_test, y_test, n_classes=3)
    # predictions: forget points 0, 1 right and 2, 3 wrong; retain: one wrong; test: one class-2 wrong
    pred = {0: 2, 1: 2, 2: 0, 3: 1, 4: 0, 5: 1, 6: 1, 7: 1, 8: 0, 9: 1, 10: 0, 11: 2, 12: 0, 13: 1}

    def proba(X):
        return np.eye(3)[[pred[int(x)] for x in np.asarray(X)[:, 0]]]

    m = classification_metrics(proba, data, np.array([0, 1, 2, 3]), forget_class=2)
    assert m["UA"] == pytest.approx(50.0)  # 1 - acc(D_f)
    assert m["RA"] == pytest.approx(100 * 5 / 6)
    # class-wise protocol: TA on the test set without the forgotten class, TA_forget beside it
    assert m["TA"] == pytest.approx(100.0)
    assert m["TA_forget"] == pytest.approx(50.0)
    assert 0.0 <= m["MIA"] <= 100.0
    assert "TA_remain" not in m
    # sample-wise forgetting: the whole test set
    assert classification_metrics(proba, data, np.array([0, 1, 2, 3]))["TA"] == pytest.approx(75.0)


def test_avg_gap_is_the_mean_absolute_difference():
    ref = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0, "TA_forget": 0.0}
    m = {"UA": 14.0, "RA": 88.0, "TA": 81.0, "MIA": 13.0, "TA_forget": 50.0}
    assert avg_gap(m, ref) == pytest.approx((4 + 2 + 1 + 7) / 4)  # TA_forget is not part of the gap
