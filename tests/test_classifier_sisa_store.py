"""SISA on disk: save/load, a deletion in another process is bit-identical to one in this
process, a killed deletion leaves the previous state loadable, and damaged folders are refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from erase.classifier.data import load_dataset
from erase.classifier.models import mlp_factory
from erase.classifier.sisa import SISAConfig, SISAModel, serial_executor, train_shard
from erase.errors import EraseError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CFG = SISAConfig(shards=3, slices=3, epochs_per_slice=2)
N = 360


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = load_dataset("digits", seed=0)
    X, y = d.X_train[:N], d.y_train[:N]
    model = SISAModel(mlp_factory(64, 10), CFG, seed=3).fit(X, y)
    folder = tmp_path_factory.mktemp("sisa") / "model"
    model.save(folder, d.X_test[:50], d.y_test[:50])
    return folder, X, y


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _weights(model: SISAModel) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CHILD = """
import sys, os, signal
import torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from erase.classifier.sisa import SISAModel
import erase.classifier.sisa_store as store
if {crash_before_commit!r}:
    def crash(folder, manifest):
        os.kill(os.getpid(), signal.SIGKILL)
    store._replace_manifest = crash
m = SISAModel.load({folder!r})
print("loaded", flush=True)
m.delete({ids!r})
m.save({folder!r})
print("saved", flush=True)
"""


def _child(folder, ids, crash_before_commit=False) -> subprocess.Popen:
    code = CHILD.format(root=str(ROOT), folder=str(folder), ids=list(map(int, ids)), crash_before_commit=crash_before_commit)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _ids(model: SISAModel) -> np.ndarray:
    a = model.assignment
    return np.concatenate([np.flatnonzero((a.shard == 0) & (a.slice == 2))[:2], np.flatnonzero((a.shard == 2) & (a.slice == 0))[:1]])


def test_save_load_roundtrip_predicts_the_same(saved):
    folder, X, _ = saved
    m = SISAModel.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "erase-sisa" and manifest["version"] == 1
    assert manifest["arch"] == {"name": "mlp", "kwargs": {"in_features": 64, "n_classes": 10, "hidden": [128]}}
    assert len(manifest["checkpoints"]) == 9 and manifest["deleted"] == []
    assert all(len(c["key"]) == 64 and len(c["sha256"]) == 64 for c in manifest["checkpoints"])
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.tmp*"))
    again = SISAModel.load(folder)
    assert np.array_equal(m.predict_proba(X), again.predict_proba(X))
    assert m.test is not None and len(m.test[1]) == 50


def test_deletion_in_another_process_is_bit_identical(saved, tmp_path):
    folder, X, y = saved
    here = SISAModel.load(folder)
    ids = _ids(here)
    stats = here.delete(ids)
    assert stats["shards_retrained"] == [0, 2] and stats["resumed_from_slice"] == {0: 2, 2: 0}
    there = _copy(folder, tmp_path)
    p = _child(there, ids)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    reopened = SISAModel.load(there)
    assert list(reopened.deleted) == sorted(ids.tolist())
    assert _same(_weights(here), _weights(reopened))
    # ... and equal to an in-memory model that never touched the disk
    mem = SISAModel(mlp_factory(64, 10), CFG, seed=3).fit(X, y)
    mem.delete(ids)
    assert _same(_weights(mem), _weights(reopened))
    # the shard that held no deleted point kept its checkpoint files
    before = {c["file"] for c in json.loads((folder / "manifest.json").read_text())["checkpoints"] if c["shard"] == 1}
    after = {c["file"] for c in json.loads((there / "manifest.json").read_text())["checkpoints"] if c["shard"] == 1}
    assert before == after


def test_deleted_samples_leave_the_folder(saved, tmp_path):
    folder, X, _ = saved
    there = _copy(folder, tmp_path)
    m = SISAModel.load(there)
    gone = _ids(m)
    m.delete(gone)
    m.save(there)
    rows = [np.ascontiguousarray(X[i], dtype=np.float32).tobytes() for i in gone]
    for f in there.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            assert not any(r in blob for r in rows), f  # no file still holds a deleted sample
    assert (SISAModel.load(there).X[gone] == 0).all()
    assert len(list(there.glob("data-*.safetensors"))) == 1 and len(list((there / "ckpt").glob("*.safetensors"))) == 9


def test_crash_before_commit_leaves_the_previous_state(saved, tmp_path):
    folder, _, _ = saved
    there = _copy(folder, tmp_path)
    old = _weights(SISAModel.load(there))
    ids = _ids(SISAModel.load(there))
    p = _child(there, ids, crash_before_commit=True)  # killed after writing the new files, before the manifest
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert len(list(there.rglob("*.safetensors"))) > 10  # the new files were written ...
    m = SISAModel.load(there)  # ... but the manifest still names the old ones
    assert list(m.deleted) == [] and _same(_weights(m), old)
    m.delete(ids)
    m.save(there)  # a later save removes the leftovers
    assert len(list(there.rglob("*.safetensors"))) == 10 and not list(there.rglob(".*tmp*"))


def test_kill_at_any_moment_leaves_a_loadable_state(saved, tmp_path):
    folder, _, _ = saved
    expected_new = SISAModel.load(folder)
    ids = _ids(expected_new)
    old = _weights(expected_new)
    expected_new.delete(ids)
    new = _weights(expected_new)
    for delay in (0.3, 1.5):
        there = _copy(folder, tmp_path / f"d{delay}")
        p = _child(there, ids)
        assert p.stdout.readline().strip() == "loaded"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        m = SISAModel.load(there)
        w = _weights(m)
        assert (list(m.deleted) == [] and _same(w, old)) or (list(m.deleted) == sorted(ids.tolist()) and _same(w, new))


def test_executor_seam(saved):
    folder, _, _ = saved
    seen = []

    def executor(tasks):
        seen.extend((t.shard, t.start) for t in tasks)
        return [train_shard(t) for t in reversed(list(tasks))]  # any order, any place

    a = SISAModel.load(folder, executor=executor)
    b = SISAModel.load(folder, executor=serial_executor)
    ids = _ids(a)
    a.delete(ids)
    b.delete(ids)
    assert seen == [(0, 2), (2, 0)]
    assert _same(_weights(a), _weights(b))


def test_damaged_or_foreign_folders_are_refused(saved, tmp_path):
    folder, X, y = saved
    with pytest.raises(EraseError, match="SISA folder not found"):
        SISAModel.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EraseError, match="no manifest.json"):
        SISAModel.load(tmp_path / "empty")

    bad = _copy(folder, tmp_path / "missing")
    victim = sorted((bad / "ckpt").glob("*.safetensors"))[4]
    victim.unlink()
    with pytest.raises(EraseError, match=f"incomplete: checkpoint ckpt/{victim.name} is missing"):
        SISAModel.load(bad)

    bad = _copy(folder, tmp_path / "flipped")
    victim = sorted((bad / "ckpt").glob("*.safetensors"))[0]
    blob = bytearray(victim.read_bytes())
    blob[-1] ^= 1
    victim.write_bytes(bytes(blob))
    with pytest.raises(EraseError, match="damaged: checkpoint .* SHA-256"):
        SISAModel.load(bad)

    bad = _copy(folder, tmp_path / "version")
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EraseError, match="format version 99"):
        SISAModel.load(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(EraseError, match="not valid JSON"):
        SISAModel.load(bad)

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(EraseError, match="not empty and holds no SISA model"):
        SISAModel.load(folder).save(other)
    with pytest.raises(EraseError, match="already holds a SISA model"):
        SISAModel.load(folder).save(_copy(folder, tmp_path / "taken"))
    plain = SISAModel(lambda: torch.nn.Linear(64, 10), CFG, seed=0).fit(X[:60], y[:60])
    with pytest.raises(EraseError, match="plain callable"):
        plain.save(tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


def _cli(args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("unlearn_cli", ROOT / "scripts" / "unlearn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(args)


def test_cli_save_then_delete(tmp_path, capsys):
    folder = tmp_path / "sisa"
    assert _cli(["--method", "sisa", "--dataset", "digits", "--save", str(folder), "--set", "epochs_per_slice=1",
                 "--set", "shards=2", "--set", "slices=2"]) == 0
    assert "saved" in capsys.readouterr().out
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n17\n")
    assert _cli(["--sisa", str(folder), "--delete", f"indices:{ids}"]) == 0
    assert "deleted 2 samples" in capsys.readouterr().out
    assert list(SISAModel.load(folder).deleted) == [5, 17]
    assert _cli(["--sisa", str(folder), "--delete", f"indices:{ids}"]) == 2
    assert "already deleted" in capsys.readouterr().err
    assert list(SISAModel.load(folder).deleted) == [5, 17]  # the refused request changed nothing


@pytest.mark.parametrize(
    "args, match",
    [
        (["--delete", "class:1"], "--delete needs --sisa DIR"),
        (["--sisa", "DIR"], "needs --delete SPEC"),
        (["--sisa", "DIR", "--delete", "class:1", "--method", "sisa"], "--method does not apply"),
        (["--sisa", "DIR", "--delete", "random:0.1"], "indices:FILE or class:C"),
        (["--method", "salun", "--dataset", "digits", "--forget", "k:3", "--save", "DIR"], "--save keeps a SISA model"),
        (["--method", "salun", "--dataset", "digits"], "give --forget"),
    ],
)
def test_cli_bad_sisa_requests(tmp_path, capsys, saved, args, match):
    folder, _, _ = saved
    there = _copy(folder, tmp_path)
    before = sorted(p.name for p in there.rglob("*"))
    args = [str(there) if a == "DIR" else a for a in args]
    assert _cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert sorted(p.name for p in there.rglob("*")) == before


def test_cli_deletion_names_rows_of_the_users_data(tmp_path, capsys):
    d = load_dataset("digits", seed=0)
    X = np.concatenate([d.X_train, d.X_test])
    y = np.concatenate([d.y_train, d.y_test])
    np.savez(tmp_path / "mine.npz", X=X, y=y)  # no test split: 20 % is held out, rows keep their numbers
    folder = tmp_path / "sisa"
    assert _cli(["--method", "sisa", "--data", str(tmp_path / "mine.npz"), "--save", str(folder),
                 "--set", "epochs_per_slice=1", "--set", "shards=2", "--set", "slices=2"]) == 0
    m = SISAModel.load(folder)
    rows = [int(r) for r in m.rows[[3, 400]]]  # two rows of X that are training samples
    (tmp_path / "req.txt").write_text("\n".join(map(str, rows)))
    assert _cli(["--sisa", str(folder), "--delete", f"indices:{tmp_path / 'req.txt'}"]) == 0
    capsys.readouterr()
    assert list(SISAModel.load(folder).deleted) == [3, 400]
    for r in rows:
        blob = np.ascontiguousarray(X[r], dtype=np.float32).tobytes()
        assert not any(blob in f.read_bytes() for f in folder.rglob("*") if f.is_file())


def test_concurrent_changes_are_refused(saved, tmp_path, capsys):
    from erase.classifier.sisa_store import locked

    folder, _, _ = saved
    there = _copy(folder, tmp_path)
    a, b = SISAModel.load(there), SISAModel.load(there)
    a.delete(_ids(a))
    a.save(there)
    b.delete(_ids(b)[:1])
    with pytest.raises(EraseError, match="changed by another process since this model was loaded"):
        b.save(there)  # would otherwise drop a's deletion
    assert len(SISAModel.load(there).deleted) == 3
    ids = tmp_path / "ids.txt"
    ids.write_text("100\n")
    with locked(there):  # another deletion in progress
        assert _cli(["--sisa", str(there), "--delete", f"indices:{ids}"]) == 2
    assert "another process is changing" in capsys.readouterr().err
    assert len(SISAModel.load(there).deleted) == 3
