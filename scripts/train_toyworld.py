#!/usr/bin/env python
"""Train the bundled toy-world model from scratch (or continue it) and export it.

    python scripts/train_toyworld.py --work-dir toyworld-cache --resume      # train / continue
    python scripts/train_toyworld.py --work-dir toyworld-cache --export-only # checkpoint -> weights
    python scripts/train_toyworld.py --judge                                 # train the judge

The exported folder (default erase/toyworld/weights) loads with
``diffusers.StableDiffusionPipeline.from_pretrained``. All logic lives in erase/toyworld/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# On a shared CPU, OpenMP threads that spin while waiting make every step up to 20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    from erase.toyworld.training import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with TrainConfig fields (flags given here win)")
    p.add_argument("--work-dir", default=d.work_dir, help="checkpoints and caches (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--steps", type=int, default=d.steps, help="diffusion training steps in all")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument("--images", type=int, default=d.images, help="renders with cached latents")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--resume", action="store_true", help="continue from the work dir's checkpoint")
    p.add_argument("--stage", choices=("vae", "all"), default="all", help="vae: only train the autoencoder")
    p.add_argument("--stop-after-minutes", type=float, default=None, help="checkpoint and stop after this long")
    p.add_argument("--export", default="erase/toyworld/weights", help="where to export (default %(default)s)")
    p.add_argument("--no-export", action="store_true", help="do not export when training ends")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint and exit")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--judge", action="store_true", help="train the judge and write it beside the model")
    p.add_argument("--evaluate", metavar="FOLDER", default=None,
                   help="measure the quality bar of the model in FOLDER (judge from --judge-dir) and exit")
    p.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales for --evaluate")
    p.add_argument("--eval-steps", type=int, default=25, help="sampling steps for --evaluate")
    p.add_argument("--eval-seeds", type=int, default=1, help="images per prompt for --evaluate")
    p.add_argument("--eval-template", type=int, default=0, help="caption template index for --evaluate")
    p.add_argument("--judge-dir", default=None, help="folder with judge.safetensors (default: bundled)")
    p.add_argument("--log", default=None, help="also append progress lines to this file")
    a = p.parse_args(argv)

    fields = {}
    if a.config:
        import yaml

        from erase.errors import EraseError

        fields = yaml.safe_load(Path(a.config).read_text()) or {}
        unknown = set(fields) - set(TrainConfig.__dataclass_fields__) - {"model"}
        if unknown:
            raise EraseError(f"unknown training option(s) in {a.config}: {', '.join(sorted(unknown))}")
        fields.pop("model", None)
    flags = dict(work_dir=a.work_dir, seed=a.seed, threads=a.threads, steps=a.steps, batch=a.batch,
                 lr=a.lr, vae_steps=a.vae_steps, images=a.images, checkpoint_every=a.checkpoint_every)
    given = {k: v for k, v in flags.items() if v != getattr(d, k)}  # flags on the command line win
    cfg = TrainConfig(**{**fields, **given})
    if a.log:
        Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    log = open(a.log, "a") if a.log else None

    if a.evaluate:
        import torch
        from diffusers import StableDiffusionPipeline

        from erase.toyworld.judge import load_judge
        from erase.toyworld.metrics import DEFAULT_GUIDANCE, generation_accuracy

        torch.set_num_threads(cfg.threads)
        pipe = StableDiffusionPipeline.from_pretrained(a.evaluate)
        judge = load_judge(a.judge_dir)
        for g in a.guidance or [DEFAULT_GUIDANCE]:
            t = time.time()
            acc = generation_accuracy(pipe, seeds=range(a.eval_seeds), steps=a.eval_steps, guidance=g, judge=judge,
                                      template=a.eval_template)
            print(json.dumps({"guidance": g, "steps": a.eval_steps, "template": a.eval_template, **{k: round(v, 4) for k, v in acc.items()},
                              "seconds": round(time.time() - t, 1)}), flush=True)
        return 0
    if a.judge:
        from erase.toyworld.judge import JudgeConfig, train_judge

        report = train_judge(JudgeConfig(seed=a.seed, threads=a.threads), Path(a.export))
        print(json.dumps(report, indent=2))
        return 0
    if a.export_only:
        from erase.toyworld.training import export

        print(json.dumps(export(cfg, Path(a.export), use_ema=not a.no_ema)["step"]), "steps exported to", a.export)
        return 0

    from tqdm import tqdm

    from erase.toyworld import training

    bars: dict[str, tqdm] = {}
    t0 = time.time()

    def progress(stage, step, total, info):
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, initial=step - 1, dynamic_ncols=True)
        bar = bars[stage]
        bar.update(step - bar.n)
        if info:
            bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)
        if log and (step % 50 == 0 or step == total):
            fields = " ".join(f"{k}={v:.5g}" for k, v in info.items())
            log.write(f"{time.strftime('%H:%M:%S')} {stage} {step}/{total} {fields} t={time.time() - t0:.0f}s\n")
            log.flush()

    if a.stage == "vae":
        import torch

        torch.set_num_threads(cfg.threads)
        training.train_vae(cfg, progress)
        return 0
    secs = a.stop_after_minutes * 60 if a.stop_after_minutes else None
    step = training.train_diffusion(cfg, resume=a.resume, progress=progress, stop_after_seconds=secs)
    for bar in bars.values():
        bar.close()
    print(f"reached step {step}")
    if not a.no_export:
        training.export(cfg, Path(a.export))
        print("exported to", a.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
