"""A jobs file across the processes of ``accelerate launch``: each job runs on one process.

    accelerate launch --multi_gpu --num_processes 2 scripts/erase.py --jobs jobs.yaml

Process k of N runs jobs k, k+N, k+2N, ... (in jobs-file order) on its own device
(``PartialState().device``: its GPU, or the CPU, where accelerate starts N CPU processes over gloo).
Every process loads its own model. When a process has run its share, the records (summary or
error of each job) are gathered on process 0, which prints one line per job in jobs-file order
and writes one combined summary (``--jobs-summary PATH``; by default
``<first job's out parent>/<jobs file stem>-summary.json``), written atomically.

Failures: a job that fails (bad settings, or an unexpected exception, whose traceback that
process prints) is recorded and its process goes on with its next job, so no process waits
forever at the gather; process 0 reports it as ``error: job N (concepts ...): message`` and exits with status 2
(the other processes with 0, see ``finish``; the launcher then exits non-zero and adds its own
failure report). Checked in every process before any work (same answer everywhere,
printed once by process 0): more processes than jobs, and two jobs writing the same ``out``.

The gather waits on a gloo group with a long timeout (``GATHER_TIMEOUT``), not the default 30
minutes, because processes finish their shares at different times. A process that dies (killed,
out of memory) makes the launcher stop the others; the jobs already written stay written.

One ``--concept`` job under a launch is the other way round: every process works on it
(``run_data_parallel``; the methods split each batch across the processes, erase.distributed)
and process 0 writes its exports. A jobs file is split by job, not by batch: measured on this
CPU for small jobs (BENCHMARKS.md), a job per process is faster, because a data-parallel step
waits for every process and small batches leave little to split. A jobs file with fewer jobs
than processes would leave processes idle, so it is refused.

One process (plain ``python scripts/erase.py``) does not come here: erase.cli runs the jobs one
after another as before (first failing job stops the run) and also writes the combined summary.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from erase.distributed import single_process
from erase.errors import EraseError

GATHER_TIMEOUT = datetime.timedelta(days=7)
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

__all__ = [
    "launched_processes", "jobs_for", "assignment", "check_jobs", "default_summary_path", "describe", "job_line",
    "write_jobs_summary", "record", "start", "is_main", "finish", "run_distributed", "run_data_parallel",
]

_session: dict = {}


def launched_processes() -> int:
    """How many processes the launcher started (from its environment; 1 outside a launcher)."""
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                pass
    return 1


def jobs_for(process_index: int, num_processes: int, num_jobs: int) -> list[int]:
    """Indices (0-based) of the jobs process ``process_index`` of ``num_processes`` runs: k, k+N, ..."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} of {num_processes}")
    return list(range(process_index, num_jobs, num_processes))


def assignment(num_processes: int, num_jobs: int) -> dict[int, int]:
    """Job index -> process index."""
    return {j: p for p in range(num_processes) for j in jobs_for(p, num_processes, num_jobs)}


def job_concepts(job: dict) -> list[str]:
    concepts = job.get("concepts") or ([job["concept"]] if job.get("concept") else [])
    return [concepts] if isinstance(concepts, str) else [str(c) for c in concepts]


def describe(job: dict) -> str:
    """'concepts a, b' (or 'apply FILE') for messages."""
    concepts = job_concepts(job)
    if concepts:
        return "concepts " + ", ".join(map(str, concepts))
    return f"apply {job['apply']}" if job.get("apply") else "no concepts"


def job_inputs(job: dict) -> list:
    """The paths a job reads (model, file to apply, model and method configs): its output must not replace them."""
    return [job.get("model"), job.get("apply"), job.get("model_config"), job.get("config")]


def check_jobs(jobs: list[dict], num_processes: int = 1) -> None:
    """Bad input found before any work: two jobs with one output folder, an output folder that
    cannot be written or would replace a job's input (erase.export.check_output_path); more
    processes than jobs."""
    from erase.export import check_output_path

    seen: dict[Path, int] = {}
    for i, job in enumerate(jobs):
        if not job.get("out"):
            continue  # run_job reports it for that job
        out = Path(job["out"]).expanduser()
        try:
            check_output_path(out, bool(job.get("overwrite", False)), inputs=job_inputs(job))
        except EraseError as e:
            raise EraseError(f"job {i + 1}: {e}") from None
        key = out.resolve()
        if key in seen:
            raise EraseError(f"jobs {seen[key] + 1} and {i + 1} both write {job['out']}: give each job its own 'out' folder")
        seen[key] = i
    if num_processes > len(jobs):
        raise EraseError(f"{num_processes} processes but only {len(jobs)} job{'s' if len(jobs) != 1 else ''}: "
                         f"launch with --num_processes {len(jobs)} or fewer (each job runs on one process)")


def default_summary_path(jobs_file: str | Path, jobs: list[dict]) -> Path:
    """``<first job's out parent>/<jobs file stem>-summary.json`` (beside the jobs file if no job has an out)."""
    name = f"{Path(jobs_file).stem}-summary.json"
    for job in jobs:
        if job.get("out"):
            return Path(job["out"]).expanduser().parent / name
    return Path(jobs_file).parent / name


def job_line(i: int, total: int, job: dict, summary: dict, process: int | None = None) -> str:
    """The CLI's line for a finished job (``[i/total] erased ... -> OUT``)."""
    how = f"from {job['apply']}" if job.get("apply") else f"in {summary['erase_seconds']:.1f} s"
    line = f"[{i + 1}/{total}] erased {', '.join(summary['concepts'])} with {summary['method']} {how} -> {job['out']}"
    return line if process is None else f"{line} (process {process})"


def error_line(i: int, job: dict, message: str) -> str:
    return f"error: job {i + 1} ({describe(job)}): {message}"


def record(i: int, job: dict, *, summary: dict | None = None, error: str | None = None, process: int = 0,
           status: str | None = None) -> dict:
    """One job's entry in the combined summary."""
    out = {"job": i + 1, "status": status or ("error" if error is not None else "ok"), "process": process,
           "out": str(job.get("out")), "method": job.get("method")}
    if summary is not None:
        out.update(concepts=summary.get("concepts"), method=summary.get("method"),
                   erase_seconds=summary.get("erase_seconds"), total_seconds=summary.get("total_seconds"),
                   device=summary.get("device"), peak_rss_bytes=summary.get("peak_rss_bytes"))
        if job.get("out"):
            out["summary"] = str(Path(job["out"]) / "summary.json")
    else:
        out["concepts"] = job_concepts(job)
    if error is not None:
        out["error"] = error
    return out


def write_jobs_summary(path: str | Path, records: list[dict], **info) -> Path:
    """The combined summary, written atomically (temporary file beside it, then renamed)."""
    path = Path(path)
    data = {**info, "jobs": sorted(records, key=lambda r: r["job"])}
    from erase.export import atomic_path

    try:
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str))
    except OSError as e:
        raise EraseError(f"cannot write the jobs summary {path}: {e.strerror or e}") from None
    return path


def start():
    """Join the launched processes (accelerate's PartialState; on a machine without GPUs the CPU
    processes over gloo) and open the gloo group the gather waits on. Every process calls it."""
    if _session:
        return _session["state"]
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    _session["state"] = state
    if state.num_processes != launched_processes():
        raise EraseError(f"{launched_processes()} processes were launched but accelerate set up {state.num_processes} "
                         f"({state.distributed_type}): launch with accelerate launch --multi_gpu --num_processes N")
    _session["group"] = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    _session["peers"] = _gather([(socket.gethostname(), os.getpid())], state.num_processes)
    return state


def is_main() -> bool:
    """Whether this process prints (process 0; any process outside a launch)."""
    state = _session.get("state")
    if state is not None:
        return state.is_main_process
    return launched_processes() == 1 or os.environ.get("RANK", "0") in ("", "0")


def finish(status: int) -> int:
    """Flush the output, wait for every process and return the exit status this process should
    end with. Under a launch only process 0 returns ``status`` (the others 0): the launcher ends
    every process as soon as one exits non-zero, so a failure status anywhere else would cut off
    process 0; the launcher exits non-zero when process 0 does."""
    sys.stdout.flush()
    sys.stderr.flush()
    main = is_main()
    group, peers = _session.pop("group", None), _session.pop("peers", [])
    _session.pop("state", None)
    if group is None:
        return status if main else 0
    import torch.distributed as dist

    dist.barrier(group=group)
    if dist.is_initialized():
        dist.destroy_process_group()
    if main and status:
        _wait_for_peers(peers)
    return status if main else 0


def _wait_for_peers(peers: list[tuple[str, int]], seconds: float = 10.0) -> None:
    """Let the other processes on this machine exit (with 0) before process 0 exits non-zero,
    so that the launcher does not report them as stopped by its SIGTERM."""
    host, me, end = socket.gethostname(), os.getpid(), time.monotonic() + seconds
    pids = [pid for h, pid in peers if h == host and pid != me]
    while pids and time.monotonic() < end:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # an exited process the launcher has not reaped yet is done too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _gather(records: list[dict], num_processes: int) -> list[dict]:
    import torch.distributed as dist

    parts: list = [None] * num_processes
    dist.all_gather_object(parts, records, group=_session["group"])
    return [r for part in parts for r in part]


def run_distributed(jobs: list[dict], run_job, *, jobs_file: str | Path | None, summary_path: str | Path | None,
                    progress: bool = True) -> int:
    """Run this process's share of ``jobs`` with ``run_job(job, progress=...)``, gather on process
    0, report and write the combined summary there; returns the exit status (0, or 2 if any failed).
    Raises EraseError (the same in every process) for bad input found before any work."""
    state = start()
    n, k = state.num_processes, state.process_index
    check_jobs(jobs, n)
    if jobs_file is not None and summary_path is None:
        summary_path = default_summary_path(jobs_file, jobs)
    began = time.perf_counter()
    records = []
    for i in jobs_for(k, n, len(jobs)):
        try:
            with single_process():  # this job is this process's alone: no data-parallel split
                summary = run_job(jobs[i], progress=progress and state.is_main_process)
            summary = json.loads(json.dumps(summary, default=str))
            records.append(record(i, jobs[i], summary=summary, process=k))
        except EraseError as e:
            records.append(record(i, jobs[i], error=str(e), process=k))
        except Exception as e:  # a bug, not bad input: its traceback here, the others go on
            traceback.print_exc()
            records.append(record(i, jobs[i], error=f"{type(e).__name__}: {e}", process=k))
    gathered = sorted(_gather(records, n), key=lambda r: r["job"])
    failed = [r for r in gathered if r["status"] != "ok"]
    if state.is_main_process:
        for r in gathered:
            job = jobs[r["job"] - 1]
            if r["status"] == "ok":
                print(job_line(r["job"] - 1, len(jobs), job, r, process=r["process"]))
            else:
                print(error_line(r["job"] - 1, job, r["error"]), file=sys.stderr)
        if summary_path is not None:
            kind = getattr(state.distributed_type, "value", str(state.distributed_type))
            try:
                write_jobs_summary(summary_path, gathered, jobs_file=str(jobs_file), processes=n, distributed_type=kind,
                                   wall_seconds=time.perf_counter() - began, failed=len(failed))
            except EraseError as e:  # only process 0 writes: report here, the others are already waiting in finish
                print(f"error: {e}", file=sys.stderr)
                return 2
    return 2 if failed else 0


def run_data_parallel(job: dict, run_job, *, progress: bool = True) -> int:
    """One job on every launched process: the methods split each batch across them
    (erase.distributed) and process 0 alone writes the exports and prints the job's line.
    Returns the exit status (0, or 2 on bad input, which every process meets alike).

    An unexpected exception in one process is raised there (its traceback printed) and the
    launcher stops the others."""
    state = start()
    main = state.is_main_process
    try:
        summary = run_job(job, progress=progress and main, write=main)
    except EraseError as e:
        if main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if main:
        print(job_line(0, 1, job, summary) + f" ({state.num_processes} processes, data-parallel)")
    return 0
