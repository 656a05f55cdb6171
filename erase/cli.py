"""Batch erasure from the command line (``python scripts/erase.py``): parsing, progress, output.

One job: load the model, erase, write into a temporary folder beside ``--out`` and rename it
when everything is written:

    OUT/model/               diffusers folder (StableDiffusionPipeline.from_pretrained), with README.md (model card)
    OUT/delta.safetensors    only the changed UNet tensors, with metadata
    OUT/model.safetensors    single-file checkpoint (original layout)
    OUT/lora/                the change as a LoRA: erase-<concepts>-<method>.safetensors (kohya layout:
                             A1111, Forge, ComfyUI), pytorch_lora_weights.safetensors (diffusers/PEFT), README.md
    OUT/mask.safetensors     SalUn's saliency mask
    OUT/grid_concept.png     before/after for prompts naming the concept (same seeds)
    OUT/grid_retain.png      before/after for unrelated prompts
    OUT/summary.json         settings, time, peak memory, the method's statistics

A jobs file (YAML) runs many: ``{defaults: {...}, jobs: [{concepts: [...], out: DIR, ...}]}``, one
after another, and writes a combined summary of them (``--jobs-summary``). Under
``accelerate launch --multi_gpu --num_processes N`` each job of a jobs file runs on one of the N
processes (erase.fanout), and a single ``--concept`` job runs on all N data-parallel, each
process taking a share of every batch (erase.distributed); process 0 writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

from erase.errors import EraseError

JOB_KEYS = {"concepts", "concept", "method", "model", "model_config", "config", "set", "out", "overwrite",
            "seeds", "exports", "name", "grid_steps", "lora_rank", "apply", "score"}
EXPORTS = ("diffusers", "delta", "single-file", "lora")


def parse_value(text: str):
    """A --set value: int, float (1e-3 too, which YAML 1.1 reads as text), bool/null/list, or text."""
    import yaml

    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_sets(pairs: list[str] | None, flag: str = "--set") -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise EraseError(f"{flag} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def read_settings(config_file: str | None, sets: list[str] | None, flag: str = "--set") -> dict:
    """Settings from a YAML file, then ``flag`` key=value pairs on top."""
    from erase.methods import read_yaml

    out = read_yaml(config_file) if config_file else {}
    out.update(parse_sets(sets, flag))
    return out


class TqdmProgress:
    """The engine's progress callback as one tqdm bar per phase."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar, self.phase = enabled, None, None

    def __call__(self, done: int, total: int, info: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        phase = info.get("phase", "")
        if phase != self.phase or self.bar is None:
            self.close()
            self.bar, self.phase = tqdm(total=total, desc=phase, unit="step", leave=True), phase
        self.bar.n = done
        if "loss" in info:
            self.bar.set_postfix(loss=f"{info['loss']:.4g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def peak_memory() -> dict:
    import torch

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available():
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def comparison_grids(pipe, result, concepts, seeds, steps: int | None = None) -> dict:
    """Before/after grids for concept prompts and unrelated prompts, same seeds."""
    from erase.evaluation import compare, image_grid
    from erase.prompts import prompt_source_for

    source = prompt_source_for(pipe, result.config.get("templates"))
    concept_prompts = [source.concept_prompts(c)[0] for c in concepts]
    retain = source.retain_prompts(concepts)[: max(2, 4 - len(concepts))]
    grids = {}
    for name, prompts in (("concept", concept_prompts), ("retain", retain)):
        cols = [(p, s) for p in prompts for s in seeds]
        before, after = compare(pipe, result, [p for p, _ in cols], [s for _, s in cols], steps=steps)
        grids[name] = image_grid([before, after], ["before", "after"], [f"{p} #{s}" for p, s in cols])
    return grids


def run_job(job: dict, *, progress: bool = True, write: bool = True) -> dict:
    """Run one erasure job (a dict with the CLI's settings); returns its summary. ``write``
    false (the other processes of a data-parallel run): erase, but score and write nothing."""
    import torch

    from erase import fanout, methods
    from erase.api import erase_concepts
    from erase.export import atomic_path, check_output_path, export_delta, export_diffusers, export_single_file
    from erase.lora import DEFAULT_RANK, parse_rank
    from erase.methods import read_yaml
    from erase.models import load_pipeline
    from erase.saliency import save_mask

    unknown = set(job) - JOB_KEYS
    if unknown:
        raise EraseError(f"unknown job setting(s): {', '.join(sorted(unknown))}")
    concepts = job.get("concepts") or ([job["concept"]] if job.get("concept") else [])
    if isinstance(concepts, str):
        concepts = [concepts]
    apply = job.get("apply")
    if apply is not None and not Path(apply).is_file():
        raise EraseError(f"file to apply not found: {apply}")
    if not concepts and apply is None:
        raise EraseError("no concept given (--concept NAME)")
    if not job.get("out"):
        raise EraseError("no output folder given (--out DIR)")
    out = Path(job["out"])
    overwrite = bool(job.get("overwrite", False))
    check_output_path(out, overwrite, inputs=fanout.job_inputs(job))
    exports = list(job.get("exports") or EXPORTS)
    bad = [e for e in exports if e not in EXPORTS]
    if bad:
        raise EraseError(f"unknown export {bad[0]!r}; choose from {', '.join(EXPORTS)}")
    lora_rank = job.get("lora_rank")
    lora_rank = DEFAULT_RANK if lora_rank is None else lora_rank
    parse_rank(lora_rank)  # checked before the slow work
    seeds = [int(s) for s in job.get("seeds") or [0, 1]]
    method = job.get("method") or methods.RECOMMENDED
    config = job.get("config")
    overrides = read_yaml(config) if isinstance(config, (str, Path)) else dict(config or {})
    overrides.pop("method", None) if overrides.get("method") in (None, method) else None
    overrides.update(job.get("set") or {})
    # settings are checked before the (slow) model load (presets of a toy-world model come later)
    if apply is None:
        methods.precheck_config(method, overrides, toyworld=job.get("model") is None)

    start = time.perf_counter()
    pipe = load_pipeline(job.get("model"), config=job.get("model_config"))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if job.get("score"):
        from erase.models import is_toyworld

        if not is_toyworld(pipe):
            raise EraseError("--score measures UA / IRA / CRA with the toy world's judge: it needs a toy-world model")
    if apply is not None:  # no training: the erasure comes from the file, checked against the model
        from erase.reload import load_erasure

        result = load_erasure(pipe, apply, concepts=concepts or None)
        if not result.concepts:
            raise EraseError(f"{apply} does not name the concepts it erases: pass --concept")
    else:
        bar = TqdmProgress(progress)
        try:
            result = erase_concepts(pipe, concepts, method, overrides, progress=bar, inplace=False)
        finally:
            bar.close()
    erase_seconds = result.stats.get("seconds", 0.0)
    if not write:
        return {"concepts": result.concepts, "method": result.method, "erase_seconds": erase_seconds}
    memory = peak_memory()
    scores = None
    if job.get("score"):  # the judge's UA / IRA / CRA of the erased model, into the summary and the model cards
        from erase.toyworld.metrics import world_scores

        with result.applied(pipe):
            scored = world_scores(pipe, result.concepts, seed=0)
        scores = {c: {k: v[k] for k in ("UA", "IRA", "CRA", "UA_heldout") if k in v} for c, v in scored.items()}

    lora_info = None
    with atomic_path(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        if "delta" in exports:
            export_delta(result, tmp / "delta.safetensors", base=pipe)
        if "diffusers" in exports:
            export_diffusers(pipe, result, tmp / "model", scores=scores)
        if "single-file" in exports:
            export_single_file(pipe, result, tmp / "model.safetensors")
        if "lora" in exports:
            from erase.lora import export_lora_folder

            lora_info = export_lora_folder(result, tmp / "lora", lora_rank, base=pipe, scores=scores)
            lora_info.pop("folder")
        if result.mask is not None:
            save_mask(tmp / "mask.safetensors", result.mask, {"method": result.method, "concepts": result.concepts})
        grids = comparison_grids(pipe, result, result.concepts, seeds, job.get("grid_steps"))
        for name, grid in grids.items():
            grid.save(tmp / f"grid_{name}.png")
        summary = {
            "concepts": result.concepts,
            "method": result.method,
            "base_model": result.base_model,
            "config": result.config,
            "stats": result.stats,
            "erase_seconds": erase_seconds,
            "total_seconds": time.perf_counter() - start,
            **memory,
            "device": str(next(pipe.unet.parameters()).device),
            "mixed_precision": getattr(pipe, "erase_mixed_precision", "no"),
            "machine": f"{platform.machine()} / torch {torch.__version__}",
            "exports": exports,
            "seeds": seeds,
        }
        if lora_info is not None:
            summary["lora"] = lora_info
        if apply is not None:
            summary["applied_from"] = str(apply)
        if scores is not None:
            summary["scores"] = scores
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def read_jobs(path: str | Path) -> list[dict]:
    from erase.methods import read_yaml

    data = read_yaml(path)
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise EraseError(f"jobs file {path} needs a non-empty 'jobs:' list")
    defaults = data.get("defaults") or {}
    out = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise EraseError(f"job {i} in {path} must be a mapping, got {type(job).__name__}")
        out.append({**defaults, **job})
    return out


def build_parser() -> argparse.ArgumentParser:
    from erase import methods

    p = argparse.ArgumentParser(
        prog="erase.py",
        description="Erase concepts from a Stable Diffusion model and export the result.",
        epilog="Example: python scripts/erase.py --concept circle --method uce --out runs/no-circle",
    )
    p.add_argument("--concept", action="append", help="concept to erase (repeat for several)")
    p.add_argument("--method", default=methods.RECOMMENDED,
                   help=f"{' | '.join(methods.available())} (default: {methods.RECOMMENDED}, see the README)")
    p.add_argument("--model", help="Hub id, diffusers folder or .safetensors file (default: the bundled toy-world model)")
    p.add_argument("--model-config", help="for a single-file --model: a diffusers folder (or Hub id) with its component configs")
    p.add_argument("--config", help="YAML file of method settings (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one method setting (repeatable)")
    p.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of the before/after grids (default: 0 1)")
    p.add_argument("--grid-steps", type=int, help="sampling steps of the before/after grids (default: the model's)")
    p.add_argument("--exports", nargs="+", choices=EXPORTS, help="what to write (default: all)")
    from erase.lora import DEFAULT_RANK

    p.add_argument("--lora-rank", help=f"rank of the LoRA export: a positive whole number or 'full' (default: {DEFAULT_RANK}, "
                   "chosen from the toy-world measurement in BENCHMARKS.md)")
    p.add_argument("--score", action="store_true", help="toy world: score the erased model with the judge (UA / IRA / CRA, "
                   "a few minutes on a CPU) into summary.json and the model cards")
    p.add_argument("--apply", metavar="FILE", help="skip training: take the erasure from a delta, a partial UNet state dict "
                   "(ESD's / UCE's scripts) or a LoRA file, check it against --model and write the other exports")
    p.add_argument("--jobs", help="YAML jobs file: {defaults: {...}, jobs: [{concepts: [...], out: DIR, ...}]}")
    p.add_argument("--jobs-summary", metavar="PATH", help="with --jobs: where to write the combined summary of all jobs "
                   "(default: <first job's out parent>/<jobs file stem>-summary.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    from erase import fanout

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # library chatter would bury the progress bars
    args = build_parser().parse_args(argv)
    distributed = fanout.launched_processes() > 1  # accelerate launch --num_processes N: see erase.fanout
    try:
        if distributed:
            fanout.start()
        if args.jobs:
            if args.concept:
                raise EraseError("give either --jobs or --concept, not both")
            jobs = read_jobs(args.jobs)
        else:
            if args.jobs_summary:
                raise EraseError("--jobs-summary goes with --jobs")
            jobs = [{
                "concepts": args.concept, "method": args.method, "model": args.model, "model_config": args.model_config,
                "config": args.config, "set": parse_sets(args.set), "out": args.out, "overwrite": args.overwrite,
                "seeds": args.seeds, "exports": args.exports, "grid_steps": args.grid_steps,
                "lora_rank": args.lora_rank, "apply": args.apply, "score": args.score,
            }]
        if distributed and not args.jobs:  # one job, every process on it: data-parallel (erase.distributed)
            return fanout.finish(fanout.run_data_parallel(jobs[0], run_job, progress=not args.no_progress))
        if distributed:
            status = fanout.run_distributed(jobs, run_job, jobs_file=args.jobs, summary_path=args.jobs_summary,
                                            progress=not args.no_progress)
            return fanout.finish(status)
        fanout.check_jobs(jobs)
        run_jobs(jobs, progress=not args.no_progress,
                 summary_path=(args.jobs_summary or fanout.default_summary_path(args.jobs, jobs)) if args.jobs else None,
                 jobs_file=args.jobs)
    except (EraseError, OSError) as e:
        if fanout.is_main():
            print(f"error: {e}", file=sys.stderr)
        return fanout.finish(2)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


def run_jobs(jobs: list[dict], *, progress: bool = True, summary_path: str | Path | None = None,
             jobs_file: str | Path | None = None) -> None:
    """One process: the jobs one after another, a line each; the first failing job stops the run
    (its EraseError propagates). With ``summary_path``, the combined summary of the jobs run (and
    the failed one) is written there, as a multi-process run writes it."""
    from erase import fanout

    records, began = [], time.perf_counter()
    try:
        for i, job in enumerate(jobs):
            try:
                summary = run_job(job, progress=progress)
            except (EraseError, OSError) as e:
                records.append(fanout.record(i, job, error=str(e)))
                raise
            records.append(fanout.record(i, job, summary=json.loads(json.dumps(summary, default=str))))
            print(fanout.job_line(i, len(jobs), job, summary))
    finally:
        if summary_path is not None and records and (len(records) == len(jobs) or records[-1]["status"] == "error"):
            records += [fanout.record(i, job, status="not run") for i, job in enumerate(jobs) if i >= len(records)]
            fanout.write_jobs_summary(summary_path, records, jobs_file=str(jobs_file), processes=1,
                                      distributed_type="NO", wall_seconds=time.perf_counter() - began,
                                      failed=sum(r["status"] == "error" for r in records))
