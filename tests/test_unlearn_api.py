"""unlearn(model, data, forget, method=...): any nn.Module, data as arrays / torch Dataset / npz / image folder."""

import numpy as np
import pytest
import torch
from torch import nn

from erase.classifier import unlearn
from erase.classifier.data import load_dataset
from erase.classifier.models import TrainConfig, find_head, predict_proba, train_classifier
from erase.classifier.resnet import resnet18
from erase.classifier.sources import as_dataset, from_arrays, load_image_folder, load_npz
from erase.errors import EraseError

torch.set_num_threads(1)


class TwoHeads(nn.Module):
    """A user's model whose output layer is not the last nn.Linear registered."""

    def __init__(self, d=64, k=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 64), nn.ReLU())
        self.classifier = nn.Linear(64, k)
        self.projection = nn.Linear(64, 16)  # registered after the head, unused by forward

    def forward(self, x):
        return self.classifier(self.body(x))


class TinyConv(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(256, k)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def digits_arrays():
    d = load_dataset("digits", seed=0)
    return np.concatenate([d.X_train, d.X_test]), np.concatenate([d.y_train, d.y_test])


@pytest.fixture(scope="module")
def trained(digits_arrays):
    X, y = digits_arrays
    data = as_dataset((X, y), seed=0)
    torch.manual_seed(0)
    model = train_classifier(TwoHeads(), data.X_train, data.y_train, TrainConfig(epochs=15), seed=0)
    return model, data


def test_head_is_found_by_its_output(trained):
    model, data = trained
    name, head = find_head(model, data.X_train[:2])
    assert name == "classifier" and head is model.classifier
    with pytest.raises(EraseError, match="'projection' is not the classification head"):
        find_head(model, data.X_train[:2], "projection")
    with pytest.raises(EraseError, match="no module named 'fc'"):
        find_head(model, data.X_train[:2], "fc")
    no_linear = nn.Sequential(nn.Conv1d(1, 10, 64), nn.Flatten())
    with pytest.raises(EraseError, match="cannot find the classification head of Sequential"):
        find_head(no_linear, np.zeros((2, 1, 64), np.float32))
    with pytest.raises(EraseError, match="cannot take inputs of shape \\(32,\\)"):
        find_head(model, np.zeros((2, 32), np.float32))


def test_unlearn_arrays_class_and_rows(trained, digits_arrays):
    model, data = trained
    X, y = digits_arrays
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = unlearn(model, (X, y), "class:7", method="boundary-expand")
    m0, m1 = res.metrics["original"], res.metrics["boundary-expand"]
    assert m0["TA_forget"] > 80 and m1["TA_forget"] <= 10 and m1["UA"] >= 90
    assert res.model.classifier.out_features == 10 and res.model.projection.out_features == 16  # the head, not the other Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # forget rows name rows of X as given, and are never held out
    rows = np.array([0, 5, 900, 1796])
    d = as_dataset((X, y), seed=0, keep=rows)
    assert np.array_equal(d.X_train[d.positions(rows)], X[rows].astype(np.float32))
    res = unlearn(model, (X, y), rows, method="salun", config={"epochs": 1})
    assert res.stats["n_forget"] == 4


def test_unlearn_bad_input(trained, digits_arrays):
    model, _ = trained
    X, y = digits_arrays
    with pytest.raises(EraseError, match="takes the model first"):
        unlearn("salun", model, (X, y), [1])
    with pytest.raises(EraseError, match="out of range"):
        unlearn(model, (X, y), [len(X) + 3], method="salun")
    y12 = y.copy()
    y12[:5] = 11
    with pytest.raises(EraseError, match="12 classes .* has 10 outputs"):
        unlearn(model, (X, y12), [1], method="salun")
    with pytest.raises(EraseError, match="unknown option 'learning_rate'"):
        unlearn(model, (X, y), [1], method="salun", config={"learning_rate": 1})
    with pytest.raises(EraseError, match="needs a torch classifier"):
        unlearn(object(), (X, y), [1], method="salun")
    with pytest.raises(EraseError, match="0 inputs for|inputs for"):
        unlearn(model, (X[:10], y), [1], method="salun")


def test_retrain_uses_the_users_training_function(trained, digits_arrays):
    model, _ = trained
    X, y = digits_arrays
    calls = []

    def my_training(m, Xr, yr):
        calls.append(len(yr))
        return train_classifier(m, Xr, yr, TrainConfig(epochs=3), seed=1)

    res = unlearn(model, (X, y), "class:7", method="retrain", train_fn=my_training)
    y_train = as_dataset((X, y), seed=0).y_train
    assert calls == [int((y_train != 7).sum())]  # called once, on D_r
    assert res.metrics["retrain"]["TA_forget"] == 0.0


def test_torch_dataset_equals_arrays(digits_arrays):
    X, y = digits_arrays
    ds = torch.utils.data.TensorDataset(torch.as_tensor(X[:300], dtype=torch.float32), torch.as_tensor(y[:300]))
    a, b = as_dataset(ds, seed=1), from_arrays(X[:300], y[:300], seed=1)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test) and a.n_classes == 10


def test_npz_files(tmp_path, digits_arrays):
    X, y = digits_arrays
    np.savez(tmp_path / "a.npz", X=X[:200], y=y[:200], X_test=X[200:260], y_test=y[200:260])
    d = load_npz(tmp_path / "a.npz")
    assert d.n_train == 200 and len(d.y_test) == 60 and d.input_range == (0.0, 1.0) and d.rows is None
    np.savez(tmp_path / "b.npz", X=X[:200])
    with pytest.raises(EraseError, match="no array 'y'"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", X=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3))
    with pytest.raises(EraseError, match="object arrays"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", X=X[:20], y=y[:20] + 0.5)
    with pytest.raises(EraseError, match="integer class ids"):
        load_npz(tmp_path / "d.npz")


def _images(root, sizes=(12,), per_class=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("zebra", "ant", "mole"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            s = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "ant" / "notes.txt").write_text("not an image")


def test_image_folder_layout(tmp_path):
    _images(tmp_path / "flat")
    d = load_image_folder(tmp_path / "flat")
    assert d.X_train.shape[1:] == (3, 12, 12) and d.n_classes == 3 and d.n_train + len(d.y_test) == 18
    assert 0 <= d.X_train.min() and d.X_train.max() <= 1 and d.input_range == (0.0, 1.0)
    # classes in sorted order, as torchvision's ImageFolder: ant=0, mole=1, zebra=2
    from PIL import Image

    first_ant = np.asarray(Image.open(tmp_path / "flat" / "ant" / "0.png"), dtype=np.float32).transpose(2, 0, 1) / 255
    assert any(np.allclose(x, first_ant) and lab == 0 for x, lab in zip(np.concatenate([d.X_train, d.X_test]), np.concatenate([d.y_train, d.y_test])))
    _images(tmp_path / "split" / "train")
    _images(tmp_path / "split" / "test", per_class=2)
    d = load_image_folder(tmp_path / "split")
    assert d.n_train == 18 and len(d.y_test) == 6
    _images(tmp_path / "mixed", sizes=(12, 16))
    with pytest.raises(EraseError, match="images differ in size"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", size=8).X_train.shape[1:] == (3, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EraseError, match="no class folders"):
        load_image_folder(tmp_path / "empty")


def test_conv_nets_boundary_and_salun():
    from erase.toyworld.render import render, to_array

    rng = np.random.default_rng(0)
    shapes = ("circle", "square", "triangle", "cross")
    labels = np.repeat(np.arange(4), 40)
    X = (to_array([render(shapes[k], "red", "solid", rng) for k in labels]) + 1) / 2  # [0, 1]
    data = from_arrays(X, labels, seed=0, input_range=(0.0, 1.0))
    torch.manual_seed(0)
    model = train_classifier(TinyConv(), data.X_train, data.y_train, TrainConfig(epochs=20, lr=0.01), seed=0)
    acc = (predict_proba(model, data.X_test).argmax(1) == data.y_test).mean()
    assert acc > 0.6
    for method in ("boundary-shrink", "boundary-expand", "salun"):
        res = unlearn(model, data, "class:1", method=method, config={"epochs": 10, "lr": 0.01} if method != "salun" else {"epochs": 3})
        assert res.metrics[method]["UA"] >= 90, (method, res.metrics)
        assert res.model.fc.out_features == 4
    res = unlearn(model, data, "class:1", method="boundary-shrink")
    assert res.stats["attack_total"] == int((data.y_train == 1).sum())


def test_resnet18_has_torchvisions_layout():
    imagenet = resnet18(n_classes=1000, small_input=False)
    assert sum(p.numel() for p in imagenet.parameters()) == 11_689_512  # torchvision.models.resnet18()
    cifar = resnet18(n_classes=10)
    assert sum(p.numel() for p in cifar.parameters()) == 11_173_962  # the 32-px ResNet-18 of the unlearning papers
    keys = set(cifar.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.num_batches_tracked",
            "layer4.1.bn2.bias", "fc.weight", "fc.bias"} <= keys
    assert len(keys) == 122
    small = resnet18(n_classes=6, width=8)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 6)
    assert find_head(small, torch.zeros(2, 3, 32, 32))[0] == "fc"


def test_retrain_refuses_a_model_it_cannot_reinitialise(digits_arrays):
    X, y = digits_arrays

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            self.temperature = nn.Parameter(torch.ones(1))  # no reset_parameters covers it

        def forward(self, x):
            return self.fc(x) / self.temperature

    with pytest.raises(EraseError, match="cannot re-initialise Scaled's parameter 'temperature'"):
        unlearn(Scaled(), (X, y), [1, 2], method="retrain", evaluate=False)
    res = unlearn(Scaled(), (X, y), [1, 2], method="retrain", factory=Scaled, config={"train": {"epochs": 1}}, evaluate=False)
    assert isinstance(res.model, Scaled)
