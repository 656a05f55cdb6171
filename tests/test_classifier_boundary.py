"""Boundary Shrink / Expanding on digits: the forgotten class goes, the others stay."""

import pytest
import torch

from erase.classifier import run_method
from erase.classifier.boundary import fgsm_neighbours
from erase.classifier.experiment import prepare_scenario
from erase.classifier.models import predict_proba

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scenario():
    return prepare_scenario("digits", "class:3", seed=0)


@pytest.mark.parametrize("method", ["boundary-shrink", "boundary-expand"])
def test_forget_class_gone_others_kept(scenario, method):
    sc = scenario
    before = {k: v.clone() for k, v in sc.original.state_dict().items()}
    res = run_method(method, sc.original, sc.data, sc.forget, seed=0)
    m = sc.evaluate(lambda X: predict_proba(res.model, X))
    orig = sc.metrics["original"]
    assert orig["TA_forget"] > 90
    assert m["TA_forget"] <= 5.0, m
    assert m["UA"] >= 95.0, m
    assert abs(m["TA"] - orig["TA"]) <= 3.0, (m, orig)  # TA: the test set without the forgotten class
    assert m["RA"] >= orig["RA"] - 3.0, (m, orig)
    # K-way output again, original untouched
    assert res.model(torch.zeros(1, 64)).shape == (1, 10)
    assert all(torch.equal(before[k], v) for k, v in sc.original.state_dict().items())


def test_shrink_reports_attack_failures_and_never_uses_true_label(scenario):
    sc = scenario
    ids = sc.forget.indices
    X = torch.as_tensor(sc.data.X_train[ids])
    y = torch.as_tensor(sc.data.y_train[ids])
    x_adv, y_nbi, failed = fgsm_neighbours(sc.original, X, y, 0.1, (0.0, 1.0))
    assert (y_nbi != y).all()
    assert 0 <= failed <= len(ids)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert torch.allclose((x_adv - X).abs().max(), torch.tensor(0.1), atol=1e-6)
    res = run_method("boundary-shrink", sc.original, sc.data, sc.forget)
    assert res.stats["attack_failed"] == failed and res.stats["attack_total"] == len(ids)
    # a zero-size step cannot cross the boundary: every attack fails, labels are still != y
    _, y0, failed0 = fgsm_neighbours(sc.original, X, y, 0.0, (0.0, 1.0))
    assert failed0 == int((predict_proba(sc.original, X).argmax(1) == y.numpy()).sum())
    assert (y0 != y).all()
