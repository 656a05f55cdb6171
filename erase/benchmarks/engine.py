"""Engine speed and memory: seconds per training step and peak memory, per method.

Always on the tiny synthetic pipeline (CPU or GPU); on an SD 1.5-shaped pipeline (random
weights, 512 px) only where a GPU is present. Each measurement runs in its own process so that
its peak memory (RSS on CPU, allocator peak on GPU) is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time

from erase.benchmarks import machine_description

CASES = {
    # name: (pipeline, method, settings)
    "tiny/fmn": ("tiny", "fmn", {"steps": 35, "lr": 1e-4, "n_forget_images": 4, "generation_steps": 5}),
    "tiny/salun": ("tiny", "salun", {"epochs": 1, "lr": 1e-4, "n_forget_images": 100, "n_retain_images": 100, "generation_steps": 5}),
    "sd15/fmn": ("sd15", "fmn", {"steps": 35, "n_forget_images": 4, "generation_steps": 10, "scope": "cross_attn"}),
    "sd15/fmn-full": ("sd15", "fmn", {"steps": 35, "n_forget_images": 4, "generation_steps": 10, "scope": "full"}),
    "sd15/salun": ("sd15", "salun", {"epochs": 1, "n_forget_images": 100, "n_retain_images": 100, "generation_steps": 10, "scope": "cross_attn"}),
}


def _measure(case: str, queue) -> None:
    import torch

    from erase.api import erase_concepts
    from erase.models import ModelInfo, default_device, default_mixed_precision
    from erase.synthetic import build_pipeline

    kind, method, settings = CASES[case]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = build_pipeline(kind, seed=0)
    device = default_device()
    pipe.to(device)
    pipe.erase_info = ModelInfo(source=f"synthetic:{kind}", kind="synthetic", family=kind)
    pipe.erase_mixed_precision = default_mixed_precision(device)
    start = time.perf_counter()
    result = erase_concepts(pipe, "van gogh", method, settings, inplace=False)
    total = time.perf_counter() - start
    stats = result.stats
    peak = stats.get("peak_memory_bytes") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({
        "case": case, "device": str(device), "precision": pipe.erase_mixed_precision,
        "steps": stats["steps"], "train_seconds": stats["train_seconds"],
        "seconds_per_step": stats["train_seconds"] / stats["steps"], "total_seconds": total,
        "peak_bytes": peak, "peak_kind": "GPU allocator" if device.type == "cuda" else "process RSS",
        "trainable": stats["trainable_parameters"],
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
    import torch

    cases = [c for c in CASES if c.startswith("tiny/") or torch.cuda.is_available()]
    rows = [measure(c) for c in cases]
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
            f"| {r['case']} | {r['device']} | {r['precision']} | {r['trainable'] / 1e6:.2f} M | {r['steps']} | "
            f"{r['seconds_per_step']:.3f} | {r['total_seconds']:.1f} | {r['peak_bytes'] / 2**20:.0f} MiB ({r['peak_kind']}) |"
        )
    if not torch.cuda.is_available():
        lines += ["", "No GPU on this machine: the SD 1.5-shaped cases (512 px, random weights; targets on one H100: "
                  "FMN's 35 steps < 2 s, SalUn mask + one epoch over 100 generated images < 60 s, peak < 12 GB) were not run."]
    lines += ["", "<details><summary>raw</summary>", "", "```json", json.dumps(rows, indent=1), "```", "</details>"]
    return "\n".join(lines)
