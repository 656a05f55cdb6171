"""Engine speed and memory: seconds per training step and peak memory, per method.

On the tiny synthetic pipeline (CPU or GPU), every registered method: FMN and SalUn with the
settings below, any other method with the GPU suite's bounded paper defaults. The SD 1.5-shaped
cases (random weights, 512 px) are the gpu suite's (erase/benchmarks/gpu.py, CUDA only). Each
measurement runs in its own process so that its peak memory (RSS on CPU, allocator peak on GPU)
is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time

from erase.benchmarks import machine_description

CASES = {
    # name: (pipeline, method, settings); other methods: see cases()
    "tiny/fmn": ("tiny", "fmn", {"steps": 35, "lr": 1e-4, "n_forget_images": 4, "generation_steps": 5}),
    "tiny/salun": ("tiny", "salun", {"epochs": 1, "lr": 1e-4, "n_forget_images": 100, "n_retain_images": 100, "generation_steps": 5}),
}


def cases() -> dict:
    """CASES plus a tiny/<method> case, bounded paper defaults, for every other registered method."""
    from erase import methods
    from erase.benchmarks.gpu import bounded_overrides

    out = dict(CASES)
    for name in methods.available():
        if not any(m == name for _, m, _ in out.values()):
            out[f"tiny/{name}"] = ("tiny", name, bounded_overrides(name))
    return out


def _measure(case: str, queue) -> None:
    import torch

    from erase.api import erase_concepts
    from erase.models import ModelInfo, default_device, default_mixed_precision, place_pipeline
    from erase.synthetic import build_pipeline

    kind, method, settings = cases()[case]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = build_pipeline(kind, seed=0)
    device = default_device()
    place_pipeline(pipe, device, default_mixed_precision(device))
    pipe.erase_info = ModelInfo(source=f"synthetic:{kind}", kind="synthetic", family=kind)
    start = time.perf_counter()
    result = erase_concepts(pipe, "van gogh", method, settings, inplace=False)
    total = time.perf_counter() - start
    stats = result.stats
    peak = stats.get("peak_memory_bytes") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps = stats.get("steps")
    train = stats.get("train_seconds", stats["seconds"])  # a closed-form method: its whole run
    queue.put({
        "case": case, "device": str(device), "precision": pipe.erase_mixed_precision,
        "steps": steps, "train_seconds": train,
        "seconds_per_step": train / steps if steps else None, "total_seconds": total,
        "peak_bytes": peak, "peak_kind": "GPU allocator" if device.type == "cuda" else "process RSS",
        "trainable": stats.get("trainable_parameters", stats.get("changed_parameters", 0)),
    })


def measure(case: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(case, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"case": case, "error": f"exit code {proc.exitcode}"}
    return queue.get()


def run(quick: bool = False) -> str:
    rows = [measure(c) for c in cases()]
    lines = [
        "## Engine: seconds per step and peak memory",
        "",
        f"Machine: {machine_description()}. Command: `python scripts/benchmark.py --suite engine`.",
        "Training steps only in s/step; total includes data-free generation of the forget/retain images.",
        "",
        "| case | device | precision | trainable params | steps | s/step | total s | peak memory |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['device']} | {r['precision']} | {r['trainable'] / 1e6:.2f} M | {r['steps'] or ''} | "
            f"{'' if r['seconds_per_step'] is None else format(r['seconds_per_step'], '.3f')} | {r['total_seconds']:.1f} | {r['peak_bytes'] / 2**20:.0f} MiB ({r['peak_kind']}) |"
        )
    lines += ["", "Methods other than FMN and SalUn run their paper defaults with bounded work (ESD 20 iterations). "
              "The SD 1.5-shaped cases are the gpu suite's: `python scripts/benchmark.py --suite gpu` on a CUDA machine "
              "(`bash scripts/gpu_check.sh OUTDIR` on the device machine)."]
    lines += ["", "<details><summary>raw</summary>", "", "```json", json.dumps(rows, indent=1), "```", "</details>"]
    return "\n".join(lines)
