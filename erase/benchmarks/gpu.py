"""GPU suite: every registered method on the SD 1.5-shaped pipeline, timed against the targets.

    python scripts/benchmark.py --suite gpu --json-dir runs/gpu-check     # on a CUDA machine
    python scripts/benchmark.py --suite gpu --gpu-pipeline tiny --json-dir /tmp/x   # CPU smoke run
    bash scripts/gpu_check.sh OUTDIR                                     # the device machine

The SD 1.5-shaped pipeline (``erase.synthetic``: random weights, 512 px) is built once, saved as
a diffusers folder in a temporary directory and loaded by ``load_pipeline`` in each case, so
every case runs the user's path: fp32 UNet master weights, the frozen VAE and text encoder in
the GPU's half precision, autocast in training. Model building and loading are excluded from
the timings.

Cases, in this order (a case is one process, with its own timeout; results.json is rewritten
after each, so a crash or a timeout keeps what came before):

1. ``tiny/<method>``: every method with smoke settings on the tiny pipeline, on the same device
   (seconds; catches dtype mistakes before the big cases spend their time).
2. ``sd15/<method>[/<variant>]``: every method in ``erase.methods.available()`` with its paper
   defaults, its amount of work bounded (``bounded_overrides``: at most 50 steps, 20
   iterations, 1 epoch, 5 sampling steps for generated training images). Work that scales with
   the bounded count is projected to the default count (``projected_seconds``).

Per case: phase times (from the progress callback), seconds per training step (first, median,
mean), peak GPU memory over the whole erasure (sampled at every progress call, as the trainer
resets the allocator's peak when training starts), the method's own statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from erase.benchmarks import machine_description

CONCEPT = "van gogh"  # a whole word of the synthetic tokenizer
COUNT_FIELDS = ("steps", "iterations", "epochs")  # the first one a config has is its amount of training
# Smoke settings for any method (fields a config lacks are skipped): seconds on the tiny pipeline.
SMOKE = {"steps": 2, "iterations": 2, "epochs": 1, "n_forget_images": 2, "n_retain_images": 2,
         "generation_steps": 2, "ddim_steps": 2, "batch_size": 2, "attack_steps": 2, "inversion_steps": 2,
         "warmup": 1}  # advunlearn: adversarial steps start after warmup, which must stay below iterations
# Bounds on the SD 1.5-shaped cases (a value is only ever lowered). ddim_steps is part of ESD's
# per-iteration work, so it is left at its default for an honest projection.
BOUNDS = {"steps": 50, "iterations": 20, "epochs": 1, "generation_steps": 5, "warmup": 5}
# Extra variants of a method (case name suffix -> overrides); a method not listed gets one case.
# A variant whose fields the method's config lacks is left out.
VARIANTS = {
    "fmn": {"cross_attn": {"scope": "cross_attn"}, "full": {"scope": "full"}},
    "salun": {"": {}, "cross_attn": {"scope": "cross_attn"}},
    "esd": {"": {}, "noxattn": {"train_method": "noxattn"}},
}
# Case order: quick and most informative first (the budget may cut the last ones).
ORDER = ("uce", "fmn", "salun", "esd")
# (case, metric, limit, what): the targets on one H100, SD 1.5 shape, 512 px, batch 1, load excluded.
TARGETS = (
    ("sd15/fmn/cross_attn", "train_seconds", 1.5, "FMN 35 steps, cross-attention scope ≤ 1.5 s"),
    ("sd15/fmn/full", "train_seconds", 2.5, "FMN 35 steps, full UNet ≤ 2.5 s"),
    ("sd15/fmn/full", "peak_gib", 12 * 1e9 / 2**30, "peak GPU memory at full scope ≤ 12 GB"),
    ("sd15/salun", "work_seconds", 30.0, "SalUn mask + one epoch over 100 generated images ≤ 30 s"),
    ("sd15/salun", "peak_gib", 12 * 1e9 / 2**30, "peak GPU memory at full scope ≤ 12 GB"),
    ("sd15/uce", "work_seconds", 1.0, "UCE < 1 s"),
)
GIB = 2**30


# ----------------------------------------------------------------------------- settings


def _defaults(method: str) -> dict:
    from erase import methods

    return dataclasses.asdict(methods.make_config(method))


def smoke_overrides(method: str) -> dict:
    """A seconds-long run of any method: few steps, 2 images, 2 sampling steps (fields it has)."""
    defaults = _defaults(method)
    out = {k: v for k, v in SMOKE.items() if k in defaults}
    if "batch_size" in out:
        out["batch_size"] = min(out["batch_size"], defaults["batch_size"])
    return out


def bounded_overrides(method: str) -> dict:
    """Paper defaults with the amount of work bounded (BOUNDS); only values above a bound change."""
    defaults = _defaults(method)
    return {k: b for k, b in BOUNDS.items() if isinstance(defaults.get(k), int) and defaults[k] > b}


def count_field(method: str) -> str | None:
    defaults = _defaults(method)
    return next((f for f in COUNT_FIELDS if f in defaults), None)


def sd15_cases(names: list[str] | None = None) -> dict[str, tuple[str, dict]]:
    """{case: (method, overrides)} for every registered method, its variants included."""
    from erase import methods

    order = {m: i for i, m in enumerate(ORDER)}
    cases: dict[str, tuple[str, dict]] = {}
    for method in sorted(methods.available(), key=lambda m: (order.get(m, len(order)), m)):
        base = bounded_overrides(method)
        fields = _defaults(method)
        for suffix, extra in (VARIANTS.get(method) or {"": {}}).items():
            if not set(extra) <= set(fields):
                continue
            case = f"sd15/{method}" + (f"/{suffix}" if suffix else "")
            cases[case] = (method, {**base, **extra})
    if names:
        unknown = [n for n in names if n not in cases and f"sd15/{n}" not in cases]
        if unknown:
            from erase.errors import EraseError

            raise EraseError(f"unknown GPU case(s) {', '.join(unknown)}; known: {', '.join(cases)}")
        cases = {c: v for c, v in cases.items() if c in names or c.removeprefix("sd15/") in names}
    return cases


# ----------------------------------------------------------------------------- one case (child)


class _Probe:
    """The progress callback: prints lines as it goes, times phases, samples peak GPU memory."""

    def __init__(self, case: str, device, partial: Path | None, record: dict):
        self.case, self.device, self.partial, self.record = case, device, partial, record
        self.events: list[tuple[float, str, int, int]] = []
        self.start = time.perf_counter()
        self.peak = 0
        self._printed = 0.0

    def peak_now(self) -> int:
        import torch

        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        return self.peak

    def __call__(self, done: int, total: int, info: dict) -> None:
        now = time.perf_counter()
        phase = str(info.get("phase", "?"))
        new_phase = not self.events or self.events[-1][1] != phase
        self.events.append((now, phase, done, total))
        self.peak_now()
        if new_phase or done == total or now - self._printed > 5:
            self._printed = now
            loss = f" loss {info['loss']:.4g}" if isinstance(info.get("loss"), float) else ""
            print(f"  [{self.case}] {now - self.start:7.2f}s  {phase}: {done}/{total}{loss}  peak {self.peak / GIB:.2f} GiB", flush=True)
        if new_phase:
            self.save_partial(phase=phase)

    def save_partial(self, **extra) -> None:
        if self.partial is not None:
            data = dict(self.record, **extra, phases=self.phases(), peak_gib=self.peak / GIB,
                        elapsed_seconds=time.perf_counter() - self.start)
            _write_json(self.partial, data)

    def phases(self) -> list[dict]:
        """Consecutive runs of one phase: seconds from the previous phase's last call to its last call."""
        out: list[dict] = []
        last = self.start
        for t, phase, _, _ in self.events:
            if out and out[-1]["phase"] == phase:
                out[-1]["seconds"] = t - out[-1]["_from"]
                out[-1]["calls"] += 1
                out[-1]["_times"].append(t)
            else:
                out.append({"phase": phase, "seconds": t - last, "calls": 1, "_from": last, "_times": [t]})
            last = t
        return [{k: v for k, v in p.items() if not k.startswith("_")} for p in out]

    def step_times(self, phase: str) -> list[float]:
        times = [t for t, p, _, _ in self.events if p == phase]
        before = [t for t, p, _, _ in self.events if t <= times[0] and p != phase] if times else []
        first = before[-1] if before else self.start
        return [b - a for a, b in zip([first, *times[:-1]], times)]


def _jsonable(stats: dict) -> dict:
    out = {}
    for k, v in stats.items():
        if isinstance(v, (bool, int, str)) or v is None:
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else str(v)
        elif isinstance(v, (list, tuple)) and len(v) <= 64 and all(isinstance(x, (int, float, str)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict) and len(v) <= 64 and all(isinstance(x, (int, float, str)) or x is None for x in v.values()):
            out[k] = {str(a): b for a, b in v.items()}
    return out


def measure_case(case: str, method: str, overrides: dict, folder: Path, *, partial: Path | None = None,
                 default_counts: dict | None = None, frozen: str = "half") -> dict:
    """Load ``folder`` with load_pipeline, erase CONCEPT with ``method``, return the measurements.

    ``frozen``: 'half' (the user's path: VAE and text encoder in the device's half precision) or
    'fp32' (they stay fp32; training still autocasts in the device's default precision).
    """
    import torch

    from erase.api import erase_concepts
    from erase.models import default_device, default_mixed_precision, load_pipeline

    device = default_device()
    record: dict = {"case": case, "method": method, "overrides": overrides, "status": "running",
                    "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    t0 = time.perf_counter()
    if frozen == "fp32":
        pipe = load_pipeline(folder, device=device, mixed_precision="no")
        overrides = dict(overrides, mixed_precision=default_mixed_precision(device))
    else:
        pipe = load_pipeline(folder, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    record.update(load_seconds=time.perf_counter() - t0, precision=overrides.get("mixed_precision", pipe.erase_mixed_precision),
                  frozen_dtype=str(pipe.text_encoder.dtype).replace("torch.", ""))
    probe = _Probe(case, device, partial, record)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    print(f"[{case}] {method} {overrides} on {device} ({record['precision']}), loaded in {record['load_seconds']:.1f}s", flush=True)
    probe.start = time.perf_counter()
    result = erase_concepts(pipe, CONCEPT, method, overrides, progress=probe, inplace=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - probe.start
    probe.peak_now()
    stats = result.stats
    phases = probe.phases()
    generation = sum(p["seconds"] for p in phases if p["phase"].startswith("generate"))
    record.update(
        status="ok", total_seconds=total, generation_seconds=generation, work_seconds=total - generation,
        phases=phases, peak_gib=probe.peak / GIB,
        peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None,
        train_peak_gib=stats["peak_memory_bytes"] / GIB if stats.get("peak_memory_bytes") else None,
        changed_tensors=len(result.tensors), changed_parameters=sum(t.numel() for t in result.tensors.values()),
        stats=_jsonable(stats),
    )
    for key in ("steps", "train_seconds", "trainable_parameters"):
        if isinstance(stats.get(key), (int, float)):
            record[key] = stats[key]
    # The training phase: the method's phase with one call per step (else its last phase).
    own = [p for p in phases if p["phase"] == method or p["phase"].startswith(method + ":")]
    steps = stats.get("steps")
    train = next((p for p in own if p["calls"] == steps), own[-1] if own else None)
    if train is not None and train["calls"] > 1:
        dts = probe.step_times(train["phase"])
        record["step_seconds"] = {"first": dts[0], "median": statistics.median(dts[1:] or dts),
                                  "mean": sum(dts[1:] or dts) / len(dts[1:] or dts), "n": len(dts)}
    # Projection to the method's default amount of work: the phases named after the method
    # (its training, ESD's sampling) scale with the bounded count; generation, masks, probes do not.
    field = count_field(method)
    if field and default_counts and field in overrides and default_counts.get(field):
        ratio = default_counts[field] / overrides[field]
        scaled = sum(p["seconds"] for p in own)
        record["projection"] = {"field": field, "bounded": overrides[field], "default": default_counts[field],
                                "scaled_phases": [p["phase"] for p in own]}
        record["projected_seconds"] = record["work_seconds"] - scaled + scaled * ratio
    print(f"[{case}] done: {total:.2f}s total, {record['work_seconds']:.2f}s without generation, "
          f"peak {record['peak_gib']:.2f} GiB" + (f", projected {record['projected_seconds']:.1f}s at {field}="
                                                    f"{default_counts[field]}" if "projected_seconds" in record else ""), flush=True)
    del pipe, result
    return record


def _child(args: list[str]) -> int:
    """python -m erase.benchmarks.gpu --child SPEC.json: run the cases in SPEC, one JSON file each."""
    spec = json.loads(Path(args[0]).read_text())
    import torch

    for item in spec["cases"]:
        out, partial = Path(item["out"]), Path(item["out"] + ".partial")
        try:
            record = measure_case(item["case"], item["method"], item["overrides"], Path(item["folder"]), partial=partial,
                                  default_counts=item.get("default_counts"), frozen=item.get("frozen", "half"))
        except Exception as e:  # noqa: BLE001 - a failed case is a result, the next one still runs
            import traceback

            traceback.print_exc()
            record = _read_json(partial) or {"case": item["case"], "method": item["method"], "overrides": item["overrides"]}
            record.update(status="error", error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500])
        _write_json(out, record)
        partial.unlink(missing_ok=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


# ----------------------------------------------------------------------------- the suite (parent)


def _write_json(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _run_children(group: list[dict], work: Path, timeout: float, label: str) -> list[dict]:
    """Run ``group`` (cases sharing one process) with a timeout; a record for each case whatever happens."""
    spec = work / f"spec-{label}.json"
    _write_json(spec, {"cases": group})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    failure = None
    try:
        proc = subprocess.run([sys.executable, "-m", "erase.benchmarks.gpu", "--child", str(spec)], env=env,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            failure = f"process exited with code {proc.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"timeout after {timeout:.0f}s"
    records = []
    for item in group:
        rec = _read_json(item["out"])
        if rec is None:  # killed or crashed inside this case: keep what it had written so far
            rec = _read_json(item["out"] + ".partial") or {"case": item["case"], "method": item["method"],
                                                           "overrides": item["overrides"]}
            rec.update(status="timeout" if failure and failure.startswith("timeout") else "error",
                       error=failure or "no result written")
        rec["wall_seconds_group"] = time.perf_counter() - start
        records.append(rec)
    return records


def _prepare_folder(kind: str, folder: Path) -> float:
    from erase.synthetic import save_pipeline_folder

    t = time.perf_counter()
    print(f"building the {kind} pipeline (random weights) in {folder} ...", flush=True)
    save_pipeline_folder(kind, folder, seed=0)
    print(f"built in {time.perf_counter() - t:.1f}s", flush=True)
    return time.perf_counter() - t


DTYPE_CLASH = ("must have the same dtype", "should be the same", "expected scalar type", "Input type")


def run_gpu(out_dir: str | Path, *, pipeline: str = "sd15", cases: list[str] | None = None,
            case_timeout: float = 150.0, budget: float = 420.0, smoke: bool = True, frozen: str = "auto") -> dict:
    """Run the suite, writing ``out_dir/results.json`` after every case; return the results.

    ``frozen``: 'half' (the user's path), 'fp32', or 'auto': 'half', unless a smoke case failed on
    a dtype clash, then 'fp32' for the big cases so that their timings still come back.
    """
    import torch

    from erase import methods
    from erase.errors import EraseError

    if frozen not in ("auto", "half", "fp32"):
        raise EraseError(f"frozen must be auto, half or fp32, got {frozen!r}")
    if pipeline not in ("sd15", "tiny"):
        raise EraseError(f"--gpu-pipeline must be sd15 or tiny, got {pipeline!r}")
    if pipeline == "sd15" and not torch.cuda.is_available():
        raise EraseError("the GPU suite's SD 1.5-shaped cases need CUDA; use --gpu-pipeline tiny for a CPU smoke run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget
    results = {
        "suite": "gpu", "machine": machine_description(), "pipeline": pipeline, "concept": CONCEPT,
        "methods": methods.available(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget_seconds": budget, "case_timeout_seconds": case_timeout, "frozen": frozen, "cases": [], "targets": [],
    }
    path = out_dir / "results.json"
    _write_json(path, results)
    work = Path(tempfile.mkdtemp(prefix="erase-gpu-"))
    try:
        tiny = work / "tiny"
        results["build_seconds"] = {"tiny": _prepare_folder("tiny", tiny)}
        plan: list[tuple[str, list[dict], float]] = []
        if smoke:
            group = [{"case": f"tiny/{m}", "method": m, "overrides": smoke_overrides(m), "folder": str(tiny),
                      "out": str(work / f"tiny-{m}.json")} for m in methods.available()]
            plan.append(("smoke", group, min(case_timeout, 120.0)))
        big = work / pipeline
        for case, (method, overrides) in sd15_cases(cases).items():
            field = count_field(method)
            counts = {field: _defaults(method)[field]} if field else {}
            name = case if pipeline == "sd15" else case.replace("sd15/", f"{pipeline}-bounded/", 1)
            item = {"case": name, "method": method, "overrides": overrides, "folder": str(big),
                    "out": str(work / (name.replace("/", "-") + ".json")), "default_counts": counts}
            plan.append((name, [item], case_timeout))
        built = pipeline == "tiny"
        if built:
            big = tiny
            for _, group, _ in plan:
                for item in group:
                    item["folder"] = str(tiny)
        for label, group, timeout in plan:
            left = deadline - time.perf_counter()
            if left < 20:
                for item in group:
                    results["cases"].append({"case": item["case"], "method": item["method"], "status": "skipped",
                                             "error": f"time budget ({budget:.0f}s) spent"})
                print(f"skipping {label}: time budget spent", flush=True)
                _write_json(path, results)
                continue
            if not built and label != "smoke":
                results["build_seconds"][pipeline] = _prepare_folder(pipeline, big)
                built = True
            if label != "smoke":
                for item in group:
                    item["frozen"] = "half" if frozen == "auto" else frozen
                    if frozen == "auto" and results.get("frozen_fallback"):
                        item["frozen"] = "fp32"
            print(f"=== {label} ({len(group)} case(s), timeout {min(timeout, left):.0f}s, {left:.0f}s of budget left)", flush=True)
            for rec in _run_children(group, work, min(timeout, left), label.replace("/", "-")):
                results["cases"].append(rec)
                status = rec.get("status")
                print(f"=== {rec['case']}: {status}" + (f" ({rec.get('error')})" if status != "ok" else ""), flush=True)
                if label == "smoke" and frozen == "auto" and any(k in str(rec.get("error", "")) for k in DTYPE_CLASH):
                    results["frozen_fallback"] = f"{rec['case']} failed on a dtype clash with the frozen parts in half precision: {rec['error']}"
                    print("!!! dtype clash in the smoke cases: the big cases run with the VAE and text encoder in fp32 "
                          "(training still autocasts); fix the half-precision path and rerun", flush=True)
            results["targets"] = check_targets(results["cases"], pipeline)
            _write_json(path, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["targets"] = check_targets(results["cases"], pipeline)
    _write_json(path, results)
    return results


def check_targets(cases: list[dict], pipeline: str = "sd15") -> list[dict]:
    if pipeline != "sd15":
        return []
    by_case = {c["case"]: c for c in cases}
    out = []
    for case, metric, limit, what in TARGETS:
        rec = by_case.get(case)
        value = rec.get(metric) if rec and rec.get("status") == "ok" else None
        out.append({"target": what, "case": case, "metric": metric, "limit": limit, "value": value,
                    "met": None if value is None else value <= limit})
    return out


# ----------------------------------------------------------------------------- Markdown


def _f(v, fmt: str = ".2f") -> str:
    return "" if v is None else format(v, fmt)


def markdown(results: dict, raw: bool = True) -> str:
    lines = [
        "## GPU: every method on the SD 1.5-shaped pipeline",
        "",
        f"Machine: {results.get('machine')}. Command: `bash scripts/gpu_check.sh OUTDIR` "
        f"(= `python scripts/benchmark.py --suite gpu`); pipeline `{results.get('pipeline')}`, random weights, "
        f"concept '{results.get('concept')}', {results.get('started')}.",
        "Paper defaults with the amount of work bounded (overrides column); model building and loading excluded. "
        "total: the whole `erase_concepts` call; work: total less data generation; projected: work with the "
        "method's own phases scaled to its default count; peak: allocator peak over the whole erasure.",
        "",
        "| case | status | precision | overrides | total s | generation s | work s | train s | s/step (median) | projected s | peak GiB |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.get("cases", []):
        ov = ", ".join(f"{k}={v}" for k, v in (r.get("overrides") or {}).items())
        status = r.get("status", "?") + (f": {r['error']}" if r.get("error") else "")
        step = (r.get("step_seconds") or {}).get("median")
        proj = r.get("projected_seconds")
        if proj is not None:
            p = r["projection"]
            proj_text = f"{proj:.1f} ({p['field']}={p['default']})"
        else:
            proj_text = ""
        precision = r.get("precision", "") + (f" (frozen {r['frozen_dtype']})" if r.get("frozen_dtype") else "")
        lines.append(
            f"| {r.get('case')} | {status.replace('|', '/')} | {precision} | {ov} | {_f(r.get('total_seconds'))} | "
            f"{_f(r.get('generation_seconds'))} | {_f(r.get('work_seconds'))} | {_f(r.get('train_seconds'))} | "
            f"{_f(step, '.4f')} | {proj_text} | {_f(r.get('peak_gib'))} |"
        )
    if results.get("frozen_fallback"):
        lines += ["", f"**The half-precision path failed** ({results['frozen_fallback']}); the SD 1.5-shaped cases "
                  "ran with the frozen VAE and text encoder in fp32."]
    if results.get("targets"):
        lines += ["", "| target | case | measured | met |", "| --- | --- | ---: | --- |"]
        for t in results["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['case']} ({t['metric']}) | {_f(t['value'])} | {met} |")
    if raw:
        lines += ["", "<details><summary>raw</summary>", "", "```json", json.dumps(results, indent=1, default=str), "```", "</details>"]
    return "\n".join(lines)


def run(quick: bool = False, out_dir: str | Path = "runs/gpu-check", **kw) -> str:
    """The suite as a Markdown section (scripts/benchmark.py --suite gpu)."""
    return markdown(run_gpu(out_dir, **kw))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    print("usage: python scripts/benchmark.py --suite gpu --json-dir DIR", file=sys.stderr)
    sys.exit(2)
