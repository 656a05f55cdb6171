"""Backdoor verification: the trigger goes only into D_f, the original learns it, unlearning removes it."""

import numpy as np
import pytest
import torch

from erase.classifier.backdoor import BackdoorConfig, apply_trigger, attack_success_rate, plant
from erase.classifier.data import load_dataset, parse_forget
from erase.errors import EraseError

torch.set_num_threads(1)


def test_trigger_placement():
    img = apply_trigger(np.full((2, 3, 6, 6), 0.5), 3, (1.0, 0.0))
    corner = img[:, :, 3:, 3:]
    assert corner[0, 0].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]  # a checkerboard, every channel
    assert (corner[1] == corner[0]).all() and (img[:, :, :3, :] == 0.5).all() and (img[:, :, :, :3] == 0.5).all()
    flat = apply_trigger(np.zeros((1, 64)), 2, (1.0, 0.0)).reshape(8, 8)
    assert flat[6:, 6:].tolist() == [[1, 0], [0, 1]] and flat.sum() == 2  # 8 x 8 digits: bottom-right corner
    odd = apply_trigger(np.zeros((1, 10)), 3, (5.0, -1.0))
    assert odd[0, -3:].tolist() == [5.0, -1.0, 5.0] and odd[0, :-3].sum() == 0
    with pytest.raises(EraseError, match="larger than"):
        apply_trigger(np.zeros((1, 3, 2, 2)), 3, (1.0, 0.0))


def test_plant_touches_only_the_forget_set():
    d = load_dataset("digits", seed=0)
    f = parse_forget("random:0.1", d, seed=0)
    cfg = BackdoorConfig(fraction=0.5, target=0)
    pd, ids = plant(d, f.indices, cfg, seed=0)
    assert set(ids) <= set(f.indices) and (d.y_train[ids] != 0).all()
    assert len(ids) == round(0.5 * (d.y_train[f.indices] != 0).sum())
    assert (pd.y_train[ids] == 0).all()
    changed = np.flatnonzero((pd.X_train != d.X_train).any(1) | (pd.y_train != d.y_train))
    assert set(changed) == set(ids)
    assert d.X_train is not pd.X_train and np.array_equal(d.X_test, pd.X_test)
    with pytest.raises(EraseError, match="target 12"):
        plant(d, f.indices, BackdoorConfig(target=12))


def test_unlearning_removes_the_backdoor():
    from erase.classifier.experiment import prepare_scenario, run_torch_method
    from erase.classifier.models import predict_proba

    d = load_dataset("digits", seed=0)
    f = parse_forget("random:0.1", d, seed=0)
    cfg = BackdoorConfig()
    pd, _ = plant(d, f.indices, cfg, seed=0)
    sc = prepare_scenario(pd, f, seed=0)

    def asr(m):
        return attack_success_rate(lambda X: predict_proba(m, X), pd, cfg)

    assert asr(sc.original) >= 80  # the trigger was learnt from D_f alone
    ref = asr(sc.retrained)
    assert ref <= 5
    for method in ("salun", "boundary-expand"):
        assert asr(run_torch_method(sc, method).models[method]) <= ref + 15, method
