"""Membership-inference attacks: scores as defined, thresholds and AUC right, LiRA tells members apart."""

import dataclasses

import numpy as np
import pytest
import torch

from erase.classifier.data import Dataset, load_dataset
from erase.classifier.mia import (
    LiRAConfig,
    Shadows,
    attack_scores,
    fit_thresholds,
    lira_phi,
    lira_scores,
    mia_suite,
    roc_auc,
)

torch.set_num_threads(1)


def test_scores_follow_song_and_mittal():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    y = np.array([0, 0, 2])
    assert attack_scores("correct", p, y).tolist() == [1.0, 0.0, 0.0]
    assert np.allclose(attack_scores("conf", p, y), [0.7, 0.1, 1 / 3])
    assert np.allclose(attack_scores("entropy", p, y), [(r * np.log(r)).sum() for r in p])
    # Mentr = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j); the score is its negation
    ment = [-(1 - 0.7) * np.log(0.7) - 0.2 * np.log(0.8) - 0.1 * np.log(0.9),
            -(1 - 0.1) * np.log(0.1) - 0.1 * np.log(0.9) - 0.8 * np.log(0.2),
            -(2 / 3) * np.log(1 / 3) - 2 * (1 / 3) * np.log(2 / 3)]
    assert np.allclose(attack_scores("mentr", p, y), -np.array(ment))
    # confident and right looks more like a member than confident and wrong (plain entropy cannot tell)
    right, wrong = np.array([[0.9, 0.05, 0.05]]), np.array([[0.05, 0.9, 0.05]])
    assert attack_scores("mentr", right, [0])[0] > attack_scores("mentr", wrong, [0])[0]
    assert attack_scores("entropy", right, [0])[0] == pytest.approx(attack_scores("entropy", wrong, [0])[0])


def test_auc_matches_sklearn_and_thresholds_separate():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    ref = 100 * roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(ref)
    assert roc_auc(np.ones(3), np.ones(4)) == pytest.approx(50.0)  # ties count half
    m_y, n_y = np.zeros(300, int), np.zeros(200, int)
    thr = fit_thresholds(pos + 2, m_y, neg, n_y, n_classes=2)
    assert 0 < thr[0] <= 3 and thr[1] == thr[0]  # class 1 has no samples: the global threshold


def test_threshold_attacks_direction():
    rng = np.random.default_rng(0)
    k = 3

    def probs(y, conf):
        p = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
        p[np.arange(len(y)), y] = conf
        return p

    y_tr, y_te = rng.integers(0, k, 500), rng.integers(0, k, 200)
    data = Dataset("toy", "classification", np.zeros((500, 1)), y_tr, np.zeros((200, 1)), y_te, n_classes=k)
    forget, retain = np.arange(50), np.arange(50, 500)
    p_test = probs(y_te, rng.uniform(0.3, 0.6, 200))
    member_like = probs(y_tr, rng.uniform(0.95, 1.0, 500))
    out = mia_suite(member_like, p_test, data, forget, retain)
    forgotten = member_like.copy()
    forgotten[:50] = probs(y_tr[:50], rng.uniform(0.3, 0.6, 50))
    out2 = mia_suite(forgotten, p_test, data, forget, retain)
    for a in ("conf", "entropy", "mentr"):
        assert out[f"MIA_{a}"] <= 5 and out[f"AUC_{a}"] >= 95, (a, out)
        assert out2[f"MIA_{a}"] >= 80 and 30 <= out2[f"AUC_{a}"] <= 70, (a, out2)


def test_lira_scores_synthetic_shadows():
    rng = np.random.default_rng(0)
    n, s = 200, 16
    inside = np.zeros((s, n), dtype=bool)
    inside[: s // 2] = True
    rng.permuted(inside, axis=0, out=inside)
    mu_ex = rng.normal(0, 1, n)  # per-example difficulty
    phi = mu_ex + np.where(inside, 3.0, 0.0) + rng.normal(0, 0.5, (s, n))
    sh = Shadows(phi, inside, n_train=n)
    ids = np.arange(n)
    assert (lira_scores(sh, mu_ex + 3.0, ids) > 0).mean() > 0.95  # the target saw them
    assert (lira_scores(sh, mu_ex, ids) < 0).mean() > 0.95  # it did not
    assert np.isfinite(lira_phi(np.array([[1.0, 0.0]]), np.array([0]))).all()


def test_lira_end_to_end_tells_the_original_from_the_retrained():
    from erase.classifier.experiment import prepare_scenario

    d = load_dataset("digits", seed=0)
    rng = np.random.default_rng(5)
    y = d.y_train[:400].copy()
    noisy = rng.choice(400, 80, replace=False)  # label noise: members must be memorised
    y[noisy] = (y[noisy] + rng.integers(1, 10, 80)) % 10
    sc = prepare_scenario(dataclasses.replace(d, X_train=d.X_train[:400], y_train=y), "random:0.2", seed=0)
    sc.train_shadows(LiRAConfig(shadows=6))
    o, r = sc.metrics["original"], sc.metrics["retrain"]
    assert o["AUC_lira"] > r["AUC_lira"] + 10, (o, r)
    assert o["MIA_lira"] < r["MIA_lira"] - 10, (o, r)
    assert 35 <= r["AUC_lira"] <= 65  # the retrained model never saw D_f
