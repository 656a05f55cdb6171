"""scripts/unlearn.py on your data and your model: npz, image folders, --model/--arch, and bad input."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from erase.classifier.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _cli(args):
    spec = importlib.util.spec_from_file_location("unlearn_cli", ROOT / "scripts" / "unlearn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(args)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    d = load_dataset("digits", seed=0)
    path = tmp_path_factory.mktemp("data") / "mine.npz"
    np.savez(path, X=np.concatenate([d.X_train, d.X_test]), y=np.concatenate([d.y_train, d.y_test]))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from erase.toyworld.render import render

    root = tmp_path_factory.mktemp("imgs") / "shapes"
    rng = np.random.default_rng(0)
    for shape in ("circle", "cross", "square"):
        (root / shape).mkdir(parents=True)
        for i in range(24):
            render(shape, "blue", "solid", rng).save(root / shape / f"{i:02d}.png")
    return root


FAST = ["--train", "epochs=5"]


def test_npz_trains_its_own_model_then_reuses_it(tmp_path, capsys, npz):
    out = tmp_path / "a"
    assert _cli(["--data", str(npz), "--method", "salun", "--forget", "class:7", "--out", str(out), "--set", "epochs=2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| salun |" in printed and "| retrain |" in printed
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert rows["original"]["TA_forget"] > 80 and rows["salun"]["TA_forget"] < 20 and rows["retrain"]["TA_forget"] == 0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["arch"])["name"] == "mlp"
    # the written model is "your model" for the next request (architecture from its metadata)
    out2 = tmp_path / "b"
    ids = tmp_path / "ids.txt"
    ids.write_text("0\n1\n2\n1796\n")
    assert _cli(["--data", str(npz), "--model", str(out / "model.safetensors"), "--method", "boundary-expand",
                 "--forget", f"indices:{ids}", "--out", str(out2), *FAST]) == 0
    assert json.loads((out2 / "metrics.json").read_text())["n_forget"] == 4


def test_image_folder_with_resnet_weights_without_metadata(tmp_path, capsys, images):
    from safetensors.torch import save_file

    from erase.classifier.resnet import resnet18

    torch.manual_seed(0)
    weights = tmp_path / "plain.safetensors"  # as a user would save it: no erase metadata
    save_file(resnet18(n_classes=3, width=4).state_dict(), str(weights))
    out = tmp_path / "o"
    assert _cli(["--data", str(images), "--model", str(weights), "--arch", "resnet18", "--method", "boundary-shrink",
                 "--forget", "class:1", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    from erase.classifier.models import load_model

    model = load_model(out / "model.safetensors")  # written with its architecture: no --arch needed
    assert model.erase_arch.kwargs == {"n_classes": 3, "width": 4, "in_channels": 3, "small_input": True}
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_module_callable_architecture(tmp_path, capsys, npz, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "from torch import nn\n"
        "def build(n_classes=10, hidden=32):\n"
        "    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o"
    assert _cli(["--data", str(npz), "--arch", "my_nets:build", "--arch-kwargs", '{"hidden": 16}', "--method", "boundary-expand",
                 "--forget", "class:2", "--out", str(out), *FAST]) == 0
    assert "| boundary-expand |" in capsys.readouterr().out
    sys.modules.pop("my_nets", None)


def _bad_weights(tmp_path):
    from safetensors.torch import save_file

    from erase.classifier.models import MLP

    save_file(MLP(64, 3).state_dict(), str(tmp_path / "three.safetensors"))
    (tmp_path / "model.pt").write_bytes(b"\x80\x04")
    return tmp_path


@pytest.mark.parametrize(
    "args, match",
    [
        (["--data", "NPZ", "--dataset", "digits", "--method", "salun", "--forget", "k:3"], "one of --dataset NAME"),
        (["--data", "/nonexistent/x.npz", "--method", "salun", "--forget", "k:3"], "data not found"),
        (["--data", "NPZ", "--model", "TMP/model.pt", "--method", "salun", "--forget", "k:3"], "pickled checkpoints are not loaded"),
        (["--data", "NPZ", "--model", "TMP/three.safetensors", "--arch", "mlp", "--method", "salun", "--forget", "k:3"],
         "10 classes (labels 0..9) but the head 'head' of MLP has 3 outputs"),
        (["--data", "NPZ", "--model", "TMP/three.safetensors", "--method", "salun", "--forget", "k:3"], "does not say its architecture"),
        (["--data", "NPZ", "--model", "TMP/three.safetensors", "--arch", "resnet18", "--method", "salun", "--forget", "k:3"],
         "not a ResNet-18"),
        (["--data", "NPZ", "--arch", "resnet18", "--method", "salun", "--forget", "k:3"], "resnet18 needs image inputs"),
        (["--data", "NPZ", "--arch", "no_such_pkg.nets:build", "--method", "salun", "--forget", "k:3"], "cannot import 'no_such_pkg.nets'"),
        (["--data", "NPZ", "--arch", "mlp", "--arch-kwargs", "{oops", "--method", "salun", "--forget", "k:3"], "--arch-kwargs is not valid JSON"),
        (["--data", "NPZ", "--method", "salun", "--forget", "indices:TMP/far.txt"], "out of range"),
        (["--data", "NPZ", "--method", "salun", "--forget", "k:3", "--train", "epoch=3"], "unknown training option 'epoch'"),
        (["--data", "NPZ", "--method", "pru", "--forget", "k:3", "--arch", "mlp"], "pru fits its own linear model"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, npz, args, match):
    _bad_weights(tmp_path)
    (tmp_path / "far.txt").write_text("5\n99999\n")
    out = tmp_path / "out"
    args = [a.replace("NPZ", str(npz)).replace("TMP", str(tmp_path)) for a in args]
    assert _cli(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1, err
    assert not out.exists()
