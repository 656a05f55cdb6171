import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_FMN

ROOT = Path(__file__).resolve().parents[1]
SETS = [x for k, v in FAST_FMN.items() for x in ("--set", f"{k}={v}")]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "erase.py"), "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_writes_every_export(tiny_folder, tmp_path):
    out = tmp_path / "run"
    r = run_cli("--model", tiny_folder, "--concept", "van gogh", "--method", "fmn", *SETS, "--seeds", "3", "--grid-steps", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model", "delta.safetensors", "model.safetensors", "grid_concept.png", "grid_retain.png", "summary.json"} <= names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["concepts"] == ["van gogh"] and summary["method"] == "fmn"
    assert summary["erase_seconds"] > 0 and summary["peak_rss_bytes"] > 0 and summary["config"]["steps"] == FAST_FMN["steps"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # an existing output folder is refused and left as it was
    before = sorted(p.name for p in out.iterdir())
    r = run_cli("--model", tiny_folder, "--concept", "van gogh", "--method", "fmn", *SETS, "--out", out)
    assert r.returncode == 2 and "exists" in r.stderr and "--overwrite" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--set", "steps=-3", "--method", "fmn"], "steps must be a positive integer"),
        (["--set", "mask_fraction=0", "--method", "salun"], "mask_fraction must be in (0, 1]"),
        (["--set", "nonsense"], "--set expects key=value"),
        (["--model", "/no/such/model"], "model path not found"),
        (["--concept", "§§", "--method", "fmn"], "not in the tokenizer's vocabulary"),
        (["--config", "/no/such.yaml"], "config file not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys, args, message):
    from erase.cli import main

    merged = (["--model", str(tiny_folder)] if "--model" not in args else []) + (["--concept", "van gogh"] if "--concept" not in args else [])
    assert main(merged + args + ["--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_jobs_file_runs_several(tiny_folder, tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(json.dumps({
        "defaults": {"model": str(tiny_folder), "method": "fmn", "config": FAST_FMN, "exports": ["delta"], "seeds": [0], "grid_steps": 2},
        "jobs": [{"concepts": ["van gogh"], "out": str(tmp_path / "a")},
                 {"concepts": ["circle", "star"], "out": str(tmp_path / "b")}],
    }))
    r = run_cli("--jobs", jobs)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "delta.safetensors").is_file() and not (tmp_path / "a" / "model").exists()
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["concepts"] == ["circle", "star"]
