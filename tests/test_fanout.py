"""A jobs file across the processes of ``accelerate launch`` (erase.fanout).

The launch tests start ``accelerate launch --multi_gpu --num_processes 2`` with the GPUs hidden:
accelerate then starts two CPU processes over gloo, the same code path as on GPUs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "erase.py"
CONCEPTS = ["van gogh", "circle", "star", "square"]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
            "TRANSFORMERS_VERBOSITY": "error"}


def launch(*args, processes: int = 2):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(SCRIPT), "--no-progress", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env(), cwd=ROOT)


def plain(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=ROOT)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def jobs_file(path: Path, model, outs: dict[str, Path], **extra) -> Path:
    """uce jobs on ``model``: delta only, a one-seed two-step grid."""
    path.write_text(json.dumps({
        "defaults": {"model": str(model), "method": "uce", "exports": ["delta"], "seeds": [0], "grid_steps": 2},
        "jobs": [{"concepts": [c], "out": str(out), **extra.get(c, {})} for c, out in outs.items()],
    }))
    return path


def read_delta(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.parametrize("n, m", [(1, 1), (1, 4), (2, 4), (2, 3), (3, 3), (3, 7), (4, 10), (5, 5)])
def test_split_gives_every_job_to_exactly_one_process(n, m):
    from erase.fanout import assignment, jobs_for

    shares = [jobs_for(k, n, m) for k in range(n)]
    assert sorted(j for share in shares for j in share) == list(range(m))
    assert all(share == list(range(k, m, n)) for k, share in enumerate(shares))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced when m >= n
    assert assignment(n, m) == {j: j % n for j in range(m)}


def test_split_rejects_a_process_outside_the_launch():
    from erase.fanout import jobs_for

    with pytest.raises(ValueError):
        jobs_for(2, 2, 4)


def test_checks_before_any_work(tmp_path):
    from erase.errors import EraseError
    from erase.fanout import check_jobs, default_summary_path

    jobs = [{"concepts": ["a"], "out": str(tmp_path / "a")}, {"concepts": ["b"], "out": str(tmp_path / "x" / ".." / "a")}]
    with pytest.raises(EraseError, match="jobs 1 and 2 both write"):
        check_jobs(jobs)
    jobs[1]["out"] = str(tmp_path / "b")
    check_jobs(jobs, 2)
    with pytest.raises(EraseError, match="3 processes but only 2 jobs: launch with --num_processes 2 or fewer"):
        check_jobs(jobs, 3)
    (tmp_path / "a_file").write_text("x")  # job 2 could not write its folder: refused before job 1 runs
    with pytest.raises(EraseError, match="job 2: cannot write .*a_file is a file"):
        check_jobs([jobs[0], {"concepts": ["b"], "out": str(tmp_path / "a_file" / "b")}])
    assert default_summary_path(tmp_path / "cfg" / "sweep.yaml", jobs) == tmp_path / "sweep-summary.json"


def test_jobs_summary_is_written_atomically(tmp_path):
    from erase.errors import EraseError
    from erase.fanout import write_jobs_summary

    path = write_jobs_summary(tmp_path / "s" / "sum.json", [{"job": 2}, {"job": 1}], processes=2)
    assert json.loads(path.read_text()) == {"processes": 2, "jobs": [{"job": 1}, {"job": 2}]}
    (tmp_path / "file").write_text("")
    with pytest.raises(EraseError, match="cannot write the jobs summary"):
        write_jobs_summary(tmp_path / "file" / "sum.json", [])
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sum.json"]


def test_single_process_jobs_summary_and_duplicate_outs(tiny_folder, tmp_path, capsys):
    from erase.cli import main

    # two jobs, one output folder: refused before any work
    jobs = jobs_file(tmp_path / "dup.yaml", tiny_folder, {"circle": tmp_path / "same", "star": tmp_path / "same"})
    assert main(["--jobs", str(jobs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: jobs 1 and 2 both write") and "\n" not in err
    assert not (tmp_path / "same").exists() and not (tmp_path / "dup-summary.json").exists()

    # the first failing job stops a one-process run (as before); the combined summary says what ran
    jobs = jobs_file(tmp_path / "j.yaml", tiny_folder, {"circle": tmp_path / "c", "star": tmp_path / "s", "square": tmp_path / "q"},
                     star={"set": {"lamb": -1}})
    assert main(["--jobs", str(jobs), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    seconds = json.loads((tmp_path / "c" / "summary.json").read_text())["erase_seconds"]
    assert out.splitlines() == [f"[1/3] erased circle with uce in {seconds:.1f} s -> {tmp_path / 'c'}"]  # the line as before
    assert err.strip().startswith("error: lamb must be a number >= 0") and "\n" not in err.strip()
    summary = json.loads((tmp_path / "j-summary.json").read_text())
    assert [(r["job"], r["status"], r["process"]) for r in summary["jobs"]] == [(1, "ok", 0), (2, "error", 0), (3, "not run", 0)]
    assert summary["processes"] == 1 and not (tmp_path / "q").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_launch_two_processes_runs_each_job_once_like_one_process(tiny_folder, tmp_path):
    one = jobs_file(tmp_path / "one.yaml", tiny_folder, {c: tmp_path / "one" / c.replace(" ", "-") for c in CONCEPTS})
    two = jobs_file(tmp_path / "two.yaml", tiny_folder, {c: tmp_path / "two" / c.replace(" ", "-") for c in CONCEPTS})
    r = launch("--jobs", two, "--jobs-summary", tmp_path / "all.json")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert [line.split("]")[0] + "]" for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]  # process 0 prints, in order
    assert [line.rsplit("(", 1)[1] for line in lines] == ["process 0)", "process 1)", "process 0)", "process 1)"]
    summary = json.loads((tmp_path / "all.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_type"] == "MULTI_CPU" and summary["failed"] == 0
    assert [(r["job"], r["concepts"], r["process"], r["status"]) for r in summary["jobs"]] == [
        (i + 1, [c], i % 2, "ok") for i, c in enumerate(CONCEPTS)]
    assert not (tmp_path / "two" / "two-summary.json").exists()  # --jobs-summary replaces the default place

    r = plain("--jobs", one)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 4 and "(process" not in r.stdout
    assert json.loads((tmp_path / "one" / "one-summary.json").read_text())["processes"] == 1
    for c in CONCEPTS:
        a, b = (read_delta(tmp_path / run / c.replace(" ", "-") / "delta.safetensors") for run in ("one", "two"))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # uce is deterministic: bit-identical


def test_launch_a_failing_job_is_reported_and_the_others_finish(tiny_folder, tmp_path):
    jobs = jobs_file(tmp_path / "jobs.yaml", tiny_folder, {"circle": tmp_path / "c", "star": tmp_path / "s", "square": tmp_path / "q"},
                     star={"set": {"lamb": -1}})  # job 2, on process 1
    r = launch("--jobs", jobs)
    assert r.returncode != 0
    assert [e.split(", got")[0] for e in errors(r.stderr)] == ["error: job 2 (concepts star): lamb must be a number >= 0"]
    assert (tmp_path / "c" / "delta.safetensors").is_file() and (tmp_path / "q" / "delta.safetensors").is_file()
    assert not (tmp_path / "s").exists() and "SIGTERM" not in r.stderr
    summary = json.loads((tmp_path / "jobs-summary.json").read_text())
    assert [(r["status"], r["process"]) for r in summary["jobs"]] == [("ok", 0), ("error", 1), ("ok", 0)] and summary["failed"] == 1


@pytest.mark.parametrize("case", ["more processes than jobs", "same out", "more processes than items per step"])
def test_launch_bad_input_is_one_line_before_any_work(tiny_folder, tmp_path, case):
    if case == "more processes than items per step":  # one --concept job: data-parallel (tests/test_data_parallel.py)
        r = launch("--model", tiny_folder, "--method", "fmn", "--set", "batch_size=1", "--concept", "circle", "--out", tmp_path / "c")
        message = "error: batch_size is 1, fewer than the 2 launched processes"
    else:
        outs = {"circle": tmp_path / "c"} if case == "more processes than jobs" else {"circle": tmp_path / "c", "star": tmp_path / "c"}
        r = launch("--jobs", jobs_file(tmp_path / "jobs.yaml", tiny_folder, outs))
        message = ("error: 2 processes but only 1 job: launch with --num_processes 1 or fewer" if case == "more processes than jobs"
                   else "error: jobs 1 and 2 both write")
    assert r.returncode != 0
    assert len(errors(r.stderr)) == 1 and errors(r.stderr)[0].startswith(message), r.stderr[-3000:]
    assert "[rank" not in r.stderr  # no traceback from the processes (the launcher adds its own failure report)
    assert "SIGTERM" not in r.stderr and "exitcode  : 2" in r.stderr  # process 0 failed, the others ended on their own
    assert sorted(p.name for p in tmp_path.iterdir()) == (["jobs.yaml"] if case != "more processes than items per step" else [])
