"""SalUn for classification: close to retrain, never y' = y, only salient weights move."""

import numpy as np
import pytest
import torch

from erase.classifier import run_method
from erase.classifier.experiment import prepare_scenario
from erase.classifier.models import predict_proba
from erase.classifier.salun import SalUnConfig, random_other_labels, saliency_mask

torch.set_num_threads(1)


@pytest.mark.parametrize("spec", ["class:3", "random:0.1"])
def test_salun_close_to_retrain(spec):
    sc = prepare_scenario("digits", spec, seed=0)
    res = run_method("salun", sc.original, sc.data, sc.forget, seed=0)
    m = sc.evaluate(lambda X: predict_proba(res.model, X))
    ref = sc.metrics["retrain"]
    assert abs(m["UA"] - ref["UA"]) <= 5.0, (m, ref)
    assert abs(m["RA"] - ref["RA"]) <= 3.0, (m, ref)
    assert abs(m["TA"] - ref["TA"]) <= 3.0, (m, ref)
    if spec.startswith("class"):
        assert sc.metrics["original"]["UA"] < 5  # the original did know the class


def test_random_labels_never_equal_true_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=5000)
    y2 = random_other_labels(y, 3, rng)
    assert (y2 != y).all()
    assert set(np.unique(y2)) == {0, 1, 2}
    # uniform over the other classes
    counts = np.bincount(y2[y == 0], minlength=3)
    assert counts[0] == 0 and abs(counts[1] - counts[2]) < 0.1 * counts[1:].sum()


def test_only_salient_weights_move():
    sc = prepare_scenario("digits", "class:5", seed=1)
    ids = sc.forget.indices
    cfg = SalUnConfig(epochs=2, mask_fraction=0.3)
    mask = saliency_mask(sc.original, torch.as_tensor(sc.data.X_train[ids]), torch.as_tensor(sc.data.y_train[ids]), 0.3, 64)
    res = run_method("salun", sc.original, sc.data, sc.forget, cfg, seed=1)
    assert abs(res.stats["mask_fraction"] - 0.3) < 0.01
    orig, new = sc.original.state_dict(), res.model.state_dict()
    moved = 0
    for k, m in mask.items():
        assert torch.equal(new[k][~m], orig[k][~m]), k
        moved += int((new[k][m] != orig[k][m]).sum())
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values())
