"""SISA: exact deletion, partial retraining, no dropped samples, safetensors checkpoints."""

import numpy as np
import pytest
import torch

from erase.classifier import run_method
from erase.classifier.data import load_dataset, retain_indices
from erase.classifier.models import mlp_factory
from erase.classifier.sisa import (
    SISAConfig,
    SISAModel,
    distribution_aware_assignment,
    expected_cost,
    uniform_assignment,
)
from erase.errors import EraseError

torch.set_num_threads(1)
CFG = SISAConfig(shards=3, slices=3, epochs_per_slice=3)
N = 500  # digits subset: 500 is not divisible by 3


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", seed=0)
    return d.X_train[:N], d.y_train[:N], d.X_test, d.y_test


def _fit(X, y, cfg=CFG, **kw):
    return SISAModel(mlp_factory(64, 10), cfg, seed=7).fit(X, y, **kw)


def _same_weights(a: SISAModel, b: SISAModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_deletion_equals_training_from_scratch_and_retrains_less(digits):
    X, y, Xt, yt = digits
    sisa = _fit(X, y)
    full = sisa.full_cost()
    # points from two shards, one of them in its last slice only
    a = sisa.assignment
    last = np.flatnonzero((a.shard == 0) & (a.slice == CFG.slices - 1))[:2]
    other = np.flatnonzero((a.shard == 1) & (a.slice == 1))[:1]
    ids = np.concatenate([last, other])
    stats = sisa.delete(ids)
    assert stats["shards_retrained"] == [0, 1]
    assert stats["resumed_from_slice"] == {0: CFG.slices - 1, 1: 1}
    assert stats["samples_retrained"] < full

    keep = retain_indices(len(y), ids)
    scratch = _fit(X[keep], y[keep], assignment=a.subset(keep))
    assert _same_weights(sisa, scratch)
    assert np.array_equal(sisa.predict_proba(Xt), scratch.predict_proba(Xt))
    # and a second, sequential deletion stays exact
    more = np.flatnonzero(sisa.alive & (a.shard == 2))[:3]
    sisa.delete(more)
    keep2 = np.flatnonzero(sisa.alive)
    scratch2 = _fit(X[keep2], y[keep2], assignment=a.subset(keep2))
    assert _same_weights(sisa, scratch2)


def test_untouched_shards_keep_their_weights(digits):
    X, y, _, _ = digits
    sisa = _fit(X, y)
    before = {k: v.clone() for k, v in sisa.state_dict().items()}
    ids = np.flatnonzero(sisa.assignment.shard == 2)[:1]
    sisa.delete(ids)
    after = sisa.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == k.startswith("shard2."), k


def test_no_sample_dropped_when_n_not_divisible():
    a = uniform_assignment(101, 7, 4, seed=0)
    assert len(a.shard) == 101
    counts = np.bincount(a.shard, minlength=7)
    assert counts.sum() == 101 and counts.max() - counts.min() <= 1
    for s in range(7):
        assert set(a.slice[a.shard == s]) <= set(range(4))


def test_disk_checkpoints_match_memory(digits, tmp_path):
    X, y, Xt, _ = digits
    X, y = X[:200], y[:200]
    mem = _fit(X, y)
    disk = _fit(X, y, cfg=SISAConfig(shards=3, slices=3, epochs_per_slice=3, checkpoint_dir=str(tmp_path)))
    files = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    assert len(files) == 9 and not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.tmp"))
    ids = np.array([3, 50])
    mem.delete(ids)
    disk.delete(ids)
    assert _same_weights(mem, disk)


def test_aggregation_modes(digits):
    X, y, Xt, yt = digits
    vote = _fit(X, y)
    soft = SISAModel(mlp_factory(64, 10), SISAConfig(shards=3, slices=3, epochs_per_slice=3, aggregation="softmax"), seed=7).fit(X, y)
    pv, ps = vote.predict_proba(Xt), soft.predict_proba(Xt)
    assert np.allclose(pv.sum(1), 1) and np.allclose(ps.sum(1), 1)
    assert set(np.unique(pv * 3).round(6)) <= {0.0, 1.0, 2.0, 3.0}  # vote shares of 3 models
    assert (pv.argmax(1) == yt).mean() > 0.7 and (ps.argmax(1) == yt).mean() > 0.7


def test_distribution_aware_sharding_lowers_expected_cost():
    n = 600
    rng = np.random.default_rng(0)
    p = np.full(n, 0.001)
    hot = rng.choice(n, 30, replace=False)
    p[hot] = 0.5
    aware = distribution_aware_assignment(p, 5, 4)
    uni = uniform_assignment(n, 5, 4, seed=0)
    sizes = np.bincount(aware.shard, minlength=5)
    assert len(sizes) == 5 and sizes.sum() == n and sizes.min() >= int(0.5 * n / 5)  # every point in one of 5 real shards
    assert aware.slice.min() >= 0 and aware.slice.max() <= 3
    assert len(set(aware.shard[hot])) == 1  # the likely deletions share one shard
    assert aware.slice[hot].min() >= 2  # ... and sit in its last slices
    assert expected_cost(aware, p)["expected_samples_in_hit_shards"] < 0.5 * expected_cost(uni, p)["expected_samples_in_hit_shards"]


def test_sisa_through_unlearn_and_errors(digits):
    X, y, _, _ = digits
    from erase.classifier.data import Dataset

    data = Dataset("digits", "classification", X, y, X[:10], y[:10], n_classes=10)
    sisa = _fit(X, y)
    res = run_method("sisa", sisa, data, [0, 1])
    assert res.stats["deleted"] == 2 and res.model is sisa
    with pytest.raises(EraseError, match="already deleted"):
        sisa.delete([1])
    with pytest.raises(EraseError, match="S=600"):
        SISAModel(mlp_factory(64, 10), SISAConfig(shards=600), seed=0).fit(X, y)
    with pytest.raises(EraseError, match="deletion probabilities"):
        SISAModel(mlp_factory(64, 10), SISAConfig(sharding="distribution"), seed=0).fit(X, y)


def test_unfitted_model_and_unused_probabilities_are_errors(digits):
    X, y, _, _ = digits
    with pytest.raises(EraseError, match="not trained yet"):
        SISAModel(mlp_factory(64, 10), CFG).delete([0])
    with pytest.raises(EraseError, match="only used by sharding=distribution"):
        SISAModel(mlp_factory(64, 10), CFG).fit(X, y, deletion_probabilities=np.full(len(y), 0.1))
