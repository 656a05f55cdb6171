"""Erasing across processes: one job data-parallel, and a jobs file fanned out (``accelerate launch``).

``run(quick)`` returns the ``## Erasing across processes`` section of BENCHMARKS.md. Every run is
``scripts/erase.py`` in a subprocess on the bundled toy-world model, one torch thread per process,
GPUs hidden (so accelerate starts CPU processes over gloo: the GPU code path):

1. One job per method (fmn and salun with their toy-world presets, erasing 'square'), run by
   one process and by ``accelerate launch --multi_gpu --num_processes 2`` (data-parallel:
   erase.distributed). Wall time, erase time, the judge's UA / IRA / CRA of both (``--score``),
   and how far the two-process delta is from the one-process one (‖Δ₂ − Δ₁‖ / ‖Δ₁‖).
2. Two small jobs (fmn, 'square' and 'circle'): one process one after the other, fanned out
   (a job per process), and data-parallel (both processes on each job, one launch per job):
   which way suits small jobs (erase.fanout chose the fan-out for jobs files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "erase.py"
CONCEPT = "square"
METHODS = ("fmn", "salun")
SMALL_JOBS = ("square", "circle")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


def _command(args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, str(SCRIPT), "--no-progress", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(SCRIPT), "--no-progress", *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], processes: int) -> float:
    """Wall seconds of scripts/erase.py with ``args`` on ``processes`` processes."""
    from erase.errors import EraseError

    t0 = time.perf_counter()
    r = subprocess.run(_command(args, processes), capture_output=True, text=True, env=_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise EraseError(f"benchmark run failed ({processes} processes, {' '.join(args)}): {r.stderr.strip()[-800:]}")
    return wall


def _delta_difference(one: Path, two: Path) -> float:
    import torch

    from erase.export import load_delta
    from erase.toyworld import default_model_path
    from erase.models import load_pipeline
    from erase.api import qualified_name

    a, _ = load_delta(one)
    b, _ = load_delta(two)
    pipe = load_pipeline(default_model_path())
    base = {qualified_name(c, n): t for c in ("unet", "text_encoder") for n, t in getattr(pipe, c).state_dict().items()}
    da = torch.cat([(a[k] - base[k]).flatten() for k in sorted(a)])
    db = torch.cat([(b.get(k, base[k]) - base[k]).flatten() for k in sorted(a)])
    return float((da - db).norm() / da.norm())


def _one_job(method: str, folder: Path, score: bool) -> list[dict]:
    rows = []
    for processes in (1, 2):
        out = folder / f"{method}-{processes}"
        args = ["--concept", CONCEPT, "--method", method, "--exports", "delta", "--seeds", "0", "--grid-steps", "4", "--out", str(out)]
        wall = _run(args + (["--score"] if score else []), processes)
        summary = json.loads((out / "summary.json").read_text())
        rows.append({"method": method, "processes": processes, "wall": wall, "erase": summary["erase_seconds"],
                     "scores": summary.get("scores", {}).get(CONCEPT), "delta": out / "delta.safetensors"})
    rows[1]["difference"] = _delta_difference(rows[0]["delta"], rows[1]["delta"])
    return rows


def _small_jobs(folder: Path) -> dict:
    jobs = {"defaults": {"method": "fmn", "exports": ["delta"], "seeds": [0], "grid_steps": 4},
            "jobs": [{"concepts": [c], "out": str(folder / f"jobs-{c}")} for c in SMALL_JOBS]}
    path = folder / "jobs.json"
    path.write_text(json.dumps(jobs))
    out = {"one process, one job after the other": _run(["--jobs", str(path)], 1)}
    for job in jobs["jobs"]:
        job["overwrite"] = True
    path.write_text(json.dumps(jobs))
    out["fanned out (a job per process)"] = _run(["--jobs", str(path)], 2)
    out["data-parallel (both processes on each job)"] = sum(
        _run(["--concept", c, "--method", "fmn", "--exports", "delta", "--seeds", "0", "--grid-steps", "4",
              "--out", str(folder / f"dp-{c}")], 2) for c in SMALL_JOBS)
    return out


def _fmt(scores) -> str:
    if not scores:
        return "—"
    return " / ".join(f"{100 * scores[k]:.0f}" for k in ("UA", "IRA", "CRA"))


def _reading(rows: list[dict], small: dict) -> str:
    """What the numbers say, from the numbers."""
    speed = ", ".join(f"{a['method']} {a['erase'] / b['erase']:.2f}x" for a, b in zip(rows[::2], rows[1::2]))
    fan, dp = small["fanned out (a job per process)"], small["data-parallel (both processes on each job)"]
    better = "fan-out" if fan < dp else "data-parallel"
    return (f"Reading: two processes against one, erase time: {speed} (above 1: faster on two). For the two small "
            f"jobs the {better} way was faster ({fan:.1f} s fanned out, {dp:.1f} s data-parallel): a data-parallel "
            "step waits for both processes and splits a small batch, and each launch pays the start and the loads "
            "again. So a jobs file is fanned out (erase.fanout) and a single `--concept` job runs data-parallel, which "
            "is what makes one large job faster where each process has a GPU of its own.")


def run(quick: bool = False) -> str:
    from erase.benchmarks import machine_description

    folder = Path(tempfile.mkdtemp(prefix="erase-parallel-"))
    methods = METHODS[:1] if quick else METHODS
    try:
        rows = [r for m in methods for r in _one_job(m, folder, score=not quick)]
        small = _small_jobs(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Erasing across processes (accelerate launch, CPU)",
        "",
        f"Machine: {machine_description()}; one torch thread per process, GPUs hidden, so "
        "`accelerate launch --multi_gpu --num_processes 2` starts two CPU processes over gloo (the GPU code path). "
        f"Load average at the end: {load:.1f}. `python scripts/benchmark.py --suite parallel`.",
        "",
        f"### One job, data-parallel ('{CONCEPT}', toy-world presets)",
        "",
        "Each process takes its share of every batch and the gradients are summed (erase.distributed); "
        "*difference* is ‖Δ₂ − Δ₁‖ / ‖Δ₁‖ between the two-process and the one-process deltas; "
        "UA / IRA / CRA are the judge's (scoring seed 0). *Wall* includes loading (about 8 s a process) and, "
        "with two processes, the launcher's start (about 6 s).",
        "",
        "| method | processes | wall (s) | erase (s) | UA / IRA / CRA | difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['difference']:.1e}" if "difference" in r else "—"
        lines.append(f"| {r['method']} | {r['processes']} | {r['wall']:.1f} | {r['erase']:.1f} | {_fmt(r['scores'])} | {diff} |")
    lines += [
        "",
        f"### Two small jobs (fmn, {' and '.join(SMALL_JOBS)})",
        "",
        "| how | wall (s) |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in small.items()],
        "",
        _reading(rows, small),
    ]
    return "\n".join(lines) + "\n"
