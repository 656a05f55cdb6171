"""Bad input: a clear EraseError naming the bad value; the CLI prints `error: ...`, exits non-zero, writes nothing."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from erase.classifier import make_config, run_method
from erase.classifier.data import load_dataset, parse_forget
from erase.classifier.models import MLP
from erase.classifier.sisa import uniform_assignment
from erase.errors import EraseError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("class:12", "unknown class 12"),
        ("class:-1", "unknown class -1"),
        ("class:three", "malformed forget spec 'class:three'"),
        ("random:1.5", "forget fraction 1.5"),
        ("random:0", "forget fraction 0"),
        ("k:0", "empty"),
        ("k:99999", "k = 99999"),
        ("banana", "malformed forget spec 'banana'"),
        ("colour:3", "unknown kind 'colour'"),
        ("indices:/nonexistent/ids.txt", "not found: /nonexistent/ids.txt"),
    ],
)
def test_bad_forget_specs(digits, spec, match):
    with pytest.raises(EraseError, match=match):
        parse_forget(spec, digits)


def test_bad_index_files(digits, tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("1\n2\n99999\n")
    with pytest.raises(EraseError, match="index 99999 is out of range"):
        parse_forget(f"indices:{f}", digits)
    f.write_text("")
    with pytest.raises(EraseError, match="empty"):
        parse_forget(f"indices:{f}", digits)
    f.write_text("1 two 3")
    with pytest.raises(EraseError, match="'two'"):
        parse_forget(f"indices:{f}", digits)
    f.write_text("\n".join(map(str, range(digits.n_train))))
    with pytest.raises(EraseError, match="whole training set"):
        parse_forget(f"indices:{f}", digits)


def test_bad_indices_and_models(digits):
    model = MLP(64, 10)
    with pytest.raises(EraseError, match="empty"):
        run_method("salun", model, digits, [])
    with pytest.raises(EraseError, match="index -3"):
        run_method("boundary-shrink", model, digits, [-3])
    with pytest.raises(EraseError, match="whole training set"):
        run_method("retrain", model, digits, np.arange(digits.n_train))
    with pytest.raises(EraseError, match="unknown method 'forget-it'"):
        run_method("forget-it", model, digits, [1])
    with pytest.raises(EraseError, match="PRU needs a linear model"):
        run_method("pru", model, digits, [1])
    with pytest.raises(EraseError, match="classification dataset; 'diabetes'"):
        run_method("salun", model, load_dataset("diabetes"), [1])
    with pytest.raises(EraseError, match="S=20 shards.*10"):
        uniform_assignment(10, 20, 2)
    with pytest.raises(EraseError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(EraseError, match="unknown option 'learning_rate'"):
        make_config("salun", {"learning_rate": 1})
    with pytest.raises(EraseError, match="class-wise forgetting needs a classification dataset"):
        parse_forget("class:1", load_dataset("diabetes"))
    from erase.classifier.experiment import prepare_scenario

    with pytest.raises(EraseError, match="'diabetes' is regression"):
        prepare_scenario("diabetes", "k:3")


def _cli():
    spec = importlib.util.spec_from_file_location("unlearn_cli", ROOT / "scripts" / "unlearn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize(
    "args, match",
    [
        (["--method", "nope", "--dataset", "digits", "--forget", "class:3"], "unknown method 'nope'"),
        (["--method", "salun", "--dataset", "cifar", "--forget", "class:3"], "unknown dataset 'cifar'"),
        (["--method", "salun", "--dataset", "digits", "--forget", "class3"], "malformed forget spec 'class3'"),
        (["--method", "salun", "--dataset", "digits", "--forget", "class:10"], "unknown class 10"),
        (["--method", "boundary-shrink", "--dataset", "diabetes", "--forget", "k:3"], "classification dataset"),
        (["--method", "sisa", "--dataset", "digits", "--forget", "k:3", "--set", "shards=5000"], "S=5000"),
        (["--method", "salun", "--dataset", "digits", "--forget", "k:3", "--set", "lr"], "--set expects key=value, got 'lr'"),
        (["--method", "sisa", "--dataset", "digits", "--forget", "k:3", "--set", "sharding=distribution"], "needs per-sample deletion probabilities"),
        (["--method", "sisa", "--dataset", "digits", "--forget", "k:3", "--deletion-probabilities", "/nonexistent/p.txt"], "not found: /nonexistent/p.txt"),
        (["--method", "salun", "--dataset", "digits", "--forget", "k:3", "--deletion-probabilities", "p.txt"], "SISA option"),
    ],
)
def test_cli_errors_write_nothing(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    rc = _cli()(args + ["--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_writes_metrics_and_safetensors(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert _cli()(["--method", "pru", "--dataset", "diabetes", "--forget", "k:10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| pru |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"]["pru"]["L2_to_retrain"] < 1.0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.tmp"))


def test_yaml_configs_mirror_the_dataclasses():
    import dataclasses

    import yaml

    from erase.classifier import METHODS

    for name, spec in METHODS.items():
        data = yaml.safe_load((ROOT / "configs" / "classifier" / f"{name}.yaml").read_text())
        assert make_config(name, data) == spec.config_cls(), name
        assert set(data) == {f.name for f in dataclasses.fields(spec.config_cls)}, name


def test_cli_distribution_aware_sisa(tmp_path, capsys):
    import json

    n = load_dataset("digits", seed=0).n_train
    probs = tmp_path / "p.txt"
    probs.write_text("0.5\n" * 3 + "0.001\n" * (n - 3))
    out = tmp_path / "run"
    args = ["--method", "sisa", "--dataset", "digits", "--forget", "k:1", "--set", "sharding=distribution",
            "--set", "epochs_per_slice=2", "--out", str(out)]
    assert _cli()(args + ["--deletion-probabilities", str(probs)]) == 0
    stats = json.loads((out / "metrics.json").read_text())["stats"]
    assert stats["exact_match_with_scratch"] is True
    probs.write_text("0.5\n" * 3)
    assert _cli()(args + ["--deletion-probabilities", str(probs), "--out", str(tmp_path / "bad")]) != 0
    assert "has 3 values for" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "method, overrides, match",
    [
        ("salun", {"mask_fraction": 1.5}, "mask_fraction must be in"),
        ("salun", {"epochs": "abc"}, "epochs must be a number, got 'abc'"),
        ("salun", {"lr": 0}, "lr must be > 0"),
        ("boundary-shrink", {"epsilon": -0.1}, "epsilon must be > 0"),
        ("boundary-expand", {"momentum": 1.0}, "momentum must be in"),
        ("sisa", {"batch_size": 0}, "batch_size must be >= 1"),
        ("sisa", {"slices": 2.5}, "slices must be a whole number"),
        ("sisa", {"aggregation": "max"}, "aggregation must be one of vote, softmax"),
        ("pru", {"eig_tol": -1}, "eig_tol must be >= 0"),
        ("retrain", {"train": 5}, "train must be a mapping"),
        ("retrain", {"train": {"epoch": 3}}, "unknown option train.'epoch'"),
    ],
)
def test_bad_option_values(method, overrides, match):
    with pytest.raises(EraseError, match=match):
        make_config(method, overrides)


def test_numbers_written_as_text_are_read():
    # YAML reads 1e-3 (no dot) as a string; --set lr=1e-3 must still mean 0.001
    assert make_config("salun", {"lr": "1e-3"}).lr == 0.001
    assert make_config("retrain", {"train": {"epochs": 3}}).train.epochs == 3


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--set", "mask_fraction=2"], "mask_fraction must be in"),
        (["--set", "batch_size=0"], "batch_size must be >= 1"),
    ],
)
def test_cli_bad_option_values_write_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    rc = _cli()(["--method", "salun", "--dataset", "digits", "--forget", "k:3", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ") and match in err
    assert not out.exists()


def test_cli_deletion_probabilities_need_distribution_sharding(tmp_path, capsys):
    n = load_dataset("digits", seed=0).n_train
    probs = tmp_path / "p.txt"
    probs.write_text("0.01\n" * n)
    out = tmp_path / "out"
    rc = _cli()(["--method", "sisa", "--dataset", "digits", "--forget", "k:1", "--out", str(out),
                 "--deletion-probabilities", str(probs)])
    assert rc != 0 and "sharding=distribution" in capsys.readouterr().err
    assert not out.exists()
