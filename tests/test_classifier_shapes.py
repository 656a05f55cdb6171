"""The concept-world image datasets: deterministic, disjoint splits, labels as documented."""

import numpy as np
import pytest

from erase.classifier.data import load_dataset
from erase.errors import EraseError


def test_shapes_and_shapes_colours():
    a = load_dataset("shapes", seed=0, n_samples=50)
    assert a.X_train.shape == (40, 3, 32, 32) and a.X_test.shape == (10, 3, 32, 32)
    assert a.n_classes == 6 and a.input_range == (0.0, 1.0) and 0 <= a.X_train.min() and a.X_train.max() <= 1
    assert set(a.y_train) <= set(range(6)) and a.X_train.flags["C_CONTIGUOUS"]
    b = load_dataset("shapes", seed=0, n_samples=50)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)  # deterministic
    a.X_train[0] = 0  # a caller's copy: the cache is not touched
    assert not np.array_equal(a.X_train[0], load_dataset("shapes", seed=0, n_samples=50).X_train[0])
    assert not any(np.array_equal(x, t) for x in b.X_train for t in b.X_test)  # no image in both splits
    c = load_dataset("shapes-colours", seed=1, n_samples=50)
    assert c.n_classes == 36 and set(c.y_train) <= set(range(36))
    # the label is shape * 6 + colour: the red pixels of a 'red' class are red
    from erase.toyworld.concepts import COLOURS

    red = [i for i, y in enumerate(c.y_train) if COLOURS[y % 6] == "red"]
    if red:
        img = c.X_train[red[0]]
        fg = img.reshape(3, -1)[:, img.reshape(3, -1).sum(0).argmin()]
        assert fg[0] > fg[1] and fg[0] > fg[2]
    with pytest.raises(EraseError, match="unknown dataset 'shapes-sizes'"):
        load_dataset("shapes-sizes")
