"""SISA's executors: serial, a process pool and Ray give the same bits; bad settings are one line.

The Ray tests start a local instance (``ray.init(num_cpus=2)``, no dashboard, nothing beyond this
machine) and are skipped when Ray is not installed (``pip install 'erase[ray]'``).
"""

import socket
import sys

import numpy as np
import pytest
import torch

from erase.classifier.data import load_dataset
from erase.classifier.models import mlp_factory
from erase.classifier.sisa import SISAConfig, SISAModel
from erase.errors import EraseError

N = 240
BASE = dict(shards=3, slices=2, epochs_per_slice=2, batch_size=32)


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", seed=0)
    return d.X_train[:N], d.y_train[:N], d.X_test[:200]


@pytest.fixture(scope="module")
def serial(digits):
    """The reference: serial fit, then a deletion hitting two shards (one from slice 0)."""
    X, y, Xt = digits
    m = SISAModel(mlp_factory(64, 10), SISAConfig(**BASE), seed=5).fit(X, y)
    fitted = (m.state_dict(), m.predict_proba(Xt))
    a = m.assignment
    ids = np.array([np.flatnonzero((a.shard == 0) & (a.slice == 0))[0], np.flatnonzero((a.shard == 2) & (a.slice == 1))[0]])
    stats = m.delete(ids)
    return fitted, (m.state_dict(), m.predict_proba(Xt)), ids, stats


def _ray_or_skip():
    try:
        import ray
    except ImportError:  # not installed, or a broken install
        pytest.skip("Ray is not installed (pip install 'erase[ray]')")
    return ray


@pytest.fixture(scope="module")
def ray_local():
    ray = _ray_or_skip()
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def _same(a, b) -> bool:
    (sa, pa), (sb, pb) = a, b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and np.array_equal(pa, pb)


def _check_against_serial(model: SISAModel, digits, serial):
    X, y, Xt = digits
    fitted, deleted, ids, stats = serial
    model.fit(X, y)
    assert _same((model.state_dict(), model.predict_proba(Xt)), fitted)
    got = model.delete(ids)
    assert got["shards_retrained"] == stats["shards_retrained"] == [0, 2]
    assert got["resumed_from_slice"] == stats["resumed_from_slice"] and got["samples_retrained"] == stats["samples_retrained"]
    assert _same((model.state_dict(), model.predict_proba(Xt)), deleted)


def test_process_pool_gives_the_serial_bits(digits, serial):
    model = SISAModel(mlp_factory(64, 10), SISAConfig(**BASE, executor="process", workers=2), seed=5)
    try:
        _check_against_serial(model, digits, serial)
    finally:
        model.executor.close()


@pytest.mark.parametrize("workers", [2, 1])
def test_ray_gives_the_serial_bits(ray_local, digits, serial, workers):
    model = SISAModel(mlp_factory(64, 10), SISAConfig(**BASE, executor="ray", workers=workers), seed=5)
    _check_against_serial(model, digits, serial)


def _lambda_factory():
    return lambda: mlp_factory(64, 10)()


def test_ray_takes_a_lambda_factory_the_process_pool_refuses_it(ray_local, digits, serial):
    X, y, Xt = digits
    with pytest.raises(EraseError, match=r"executor 'process' sends the model factory .* '_lambda_factory.<locals>.<lambda>' cannot be pickled"):
        SISAModel(_lambda_factory(), SISAConfig(**BASE, executor="process"), seed=5).fit(X, y)
    ray_model = SISAModel(_lambda_factory(), SISAConfig(**BASE, executor="ray"), seed=5).fit(X, y)
    assert _same((ray_model.state_dict(), ray_model.predict_proba(Xt)), serial[0])  # cloudpickle ships it


def test_a_failing_shard_task_on_ray_is_one_line(ray_local, digits):
    from erase.classifier.archs import Arch

    X, y, _ = digits
    with pytest.raises(EraseError, match="cannot import 'erase_no_such_module'") as e:
        SISAModel(Arch("erase_no_such_module:net"), SISAConfig(**BASE, executor="ray"), seed=5).fit(X, y)
    assert "\n" not in str(e.value)


def test_a_folder_saved_with_ray_loads_without_it(digits, tmp_path, monkeypatch):
    import dataclasses

    import erase.classifier.executors as ex

    X, y, _ = digits
    model = SISAModel(mlp_factory(64, 10), SISAConfig(shards=2, slices=1, epochs_per_slice=1), seed=1).fit(X[:60], y[:60])
    model.config = dataclasses.replace(model.config, executor="ray")  # as if trained on a cluster
    model.save(tmp_path / "sisa")
    # not sys.modules['ray'] = None: a Ray instance another test started may still be running, and its threads import
    monkeypatch.setattr(ex, "ray_available", lambda: False)
    with pytest.raises(EraseError, match=r"pip install 'erase\[ray\]' \(or use executor serial or process\)"):
        SISAModel.load(tmp_path / "sisa")
    again = SISAModel.load(tmp_path / "sisa", executor="serial")
    assert again.config.executor == "serial"
    assert again.delete([0])["shards_retrained"] == [int(again.assignment.shard[0])]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_ray_address_that_does_not_answer(digits, monkeypatch, scheme):
    ray = _ray_or_skip()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, even if a fixture started one
    X, y, _ = digits
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    cfg = SISAConfig(**BASE, executor="ray", ray_address=address, ray_connect_timeout=2)
    with pytest.raises(EraseError, match=f"no Ray cluster answers at {address} .*ray start --head") as e:
        SISAModel(mlp_factory(64, 10), cfg).fit(X, y)
    assert "\n" not in str(e.value)


def test_a_port_held_by_something_else_is_not_taken_for_ray(digits, monkeypatch):
    ray = _ray_or_skip()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    X, y, _ = digits
    with socket.socket() as silent:  # accepts connections, never says a word (ray.init would retry for minutes)
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        cfg = SISAConfig(**BASE, executor="ray", ray_address=address, ray_connect_timeout=1)
        with pytest.raises(EraseError, match=f"something listens at {address} but it does not answer as a Ray cluster"):
            SISAModel(mlp_factory(64, 10), cfg).fit(X, y)


_CHILD = """
import sys, numpy as np
from safetensors.torch import save_file
from erase.classifier.data import load_dataset
from erase.classifier.models import mlp_factory
from erase.classifier.sisa import SISAConfig, SISAModel
d = load_dataset("digits", seed=0)
cfg = SISAConfig(**{base!r}, executor="ray", ray_address={address!r}, threads={threads})
m = SISAModel(mlp_factory(64, 10), cfg, seed=5).fit(d.X_train[:{n}], d.y_train[:{n}])
save_file(m.state_dict(), sys.argv[1])
"""


def test_a_second_driver_connects_to_a_running_cluster_by_address(ray_local, serial, tmp_path):
    """ray_address='host:port' from a fresh process, against the instance the fixture started."""
    import subprocess

    from safetensors.torch import load_file

    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "weights.safetensors"
    code = _CHILD.format(base=BASE, address=address, n=N, threads=torch.get_num_threads())  # the serial run's count
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    got = load_file(str(out))
    want = serial[0][0]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_ray_not_installed_names_the_fix(monkeypatch):
    import erase.classifier.executors as ex

    def no_ray():
        raise ImportError("No module named 'ray'")

    monkeypatch.setattr(ex, "_load_ray", no_ray)  # import ray -> ImportError, for this module only
    monkeypatch.setattr(ex, "ray_available", lambda: False)
    with pytest.raises(EraseError, match=r"needs Ray, which is not installed here: pip install 'erase\[ray\]'"):
        SISAModel(mlp_factory(64, 10), SISAConfig(executor="ray"))
    with pytest.raises(EraseError, match=r"pip install 'erase\[ray\]'"):
        ex._import_ray()


@pytest.mark.parametrize("options, message", [
    ({"executor": "spark"}, "executor must be one of serial, process, ray; got 'spark'"),
    ({"executor": "process", "workers": 0}, "workers must be >= 1, got 0"),
    ({"workers": 1.5}, "workers must be a whole number"),
    ({"threads": 0}, "threads must be >= 1"),
    ({"executor": "ray", "ray_address": "localhost"}, "ray_address must be null .* got 'localhost'"),
    ({"executor": "ray", "ray_address": "http://h:1"}, "ray_address must be null"),
    ({"ray_num_cpus": 0}, "ray_num_cpus must be > 0"),
])
def test_bad_executor_settings(options, message):
    with pytest.raises(EraseError, match=message):
        SISAConfig(**options)


def test_projection_and_suite_registration():
    from erase.benchmarks import SUITES
    from erase.classifier.executors import projected_seconds

    assert "sisa" in SUITES
    assert projected_seconds(20, 8, 1.0, 0.5) == 3.5 and projected_seconds(20, 1, 0.25) == 5.0
