"""One evaluation of an erasure: scores, then attacks that try to bring the concept back.

    from erase import evaluate
    report = evaluate(concept="square", delta="no-square.safetensors", attacks=["ti", "prompt", "relapse"])
    print(report["table"])

On the bundled toy world: UA / IRA / CRA / distance of the erased model (erase.toyworld.metrics
.erasure_scores) and the post-attack UA of each attack on the same UA prompts and seeds. On any
other model: before / after / attacked image grids for a person to look at, with the found
prompts. ``python scripts/evaluate.py`` is the command line (``main`` below).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

from erase.errors import EraseError

__all__ = ["evaluate", "format_table", "main", "DEFAULT_ATTACKS", "check_concept_drawn", "AttackData"]

DEFAULT_ATTACKS = ("ti", "prompt", "relapse")
MAX_BASE_UA = 0.5  # an attack needs a base model that draws the concept: at most this UA before erasure


class AttackData:
    """The attackers' data for one concept, made once by the *base* model and shared by every
    attack (and every erasure) that asks for the same kind: the concept's images (or the user's
    ``images``) or the retain set, per (kind, image count, generation steps, guidance, seed)."""

    def __init__(self, pipe, concept: str, images=None):
        self.pipe, self.concept, self.images = pipe, concept, images
        self._made: dict[tuple, tuple] = {}

    def get(self, attack: str, cfg, progress=None) -> tuple:
        """(latents, prompts) for ``attack`` with config ``cfg``; call it with the base weights in place."""
        from erase.attacks import concept_data, get, retain_data

        needs = get(attack).needs
        key = (needs, cfg.n_images, cfg.generation_steps, cfg.guidance_scale, cfg.seed)
        if key not in self._made:
            self._made[key] = (retain_data(self.pipe, self.concept, cfg, progress=progress) if needs == "retain"
                               else concept_data(self.pipe, self.concept, cfg, images=self.images, progress=progress))
        return self._made[key]


def check_concept_drawn(pipe, concept: str, seeds: Sequence[int] = (0,), judge=None, sampling: Mapping | None = None) -> float:
    """Toy world: the base model's UA on the attacked prompts; an EraseError when it already
    exceeds ``MAX_BASE_UA`` (the model never drew the concept, so no attack can bring it back
    and a high post-attack UA would mean nothing). Returns that UA."""
    from erase.attacks import _generate, attack_prompts, judge_ua
    from erase.evaluation import sampling_defaults

    prompts, img_seeds = attack_prompts(pipe, concept, seeds)
    samp = {**sampling_defaults(pipe), **(sampling or {})}
    ua = judge_ua(_generate(pipe, prompts, img_seeds, None, steps=samp["steps"], guidance=samp["guidance_scale"]), concept, judge)
    if ua > MAX_BASE_UA:
        raise EraseError(f"the base model does not draw {concept!r} (UA {100 * ua:.0f} % before any erasure): "
                         "there is nothing for an attack to bring back")
    return ua


def _bf16(t):
    import torch

    t = t.detach().cpu()
    return t.to(torch.bfloat16) if t.is_floating_point() else t


def changed_components(base, erased) -> list[str]:
    """The UNet and each text encoder of ``erased`` whose weights differ from ``base``'s (an erased
    model given as a folder: the relapse attack fine-tunes what the erasure changed)."""
    import torch

    from erase.conditioning import text_encoder_names

    out = ["unet"]
    for name in text_encoder_names(base):
        mine, theirs = getattr(base, name, None), getattr(erased, name, None)
        if mine is None or theirs is None:
            continue
        a, b = mine.state_dict(), theirs.state_dict()
        # compared in bf16: a folder exported from a session that held the encoder in bf16 is unchanged
        if a.keys() != b.keys() or any(not torch.equal(_bf16(a[k]), _bf16(b[k])) for k in a):
            out.append(name)
    return out


def _parse_attacks(attacks) -> list[str]:
    from erase import attacks as registry

    items = attacks.split(",") if isinstance(attacks, str) else list(attacks or [])
    names = [str(a).strip().lower() for a in items if str(a).strip()]
    for a in names:
        registry.get(a)
    return list(dict.fromkeys(names))


def evaluate(
    model=None, *, concept: str, pipe=None, delta=None, erased=None, result=None, method: str | None = None, apply=None,
    method_config=None, attacks: Sequence[str] | str = DEFAULT_ATTACKS, attack_configs: Mapping[str, Mapping] | None = None,
    seeds: Sequence[int] = (0,), images=None, out: str | Path | None = None, overwrite: bool = False, progress=None,
    sampling_steps: int | None = None, restarts: int = 1,
) -> dict:
    """Evaluate the erasure of ``concept`` and attack it.

    The base model: ``pipe``, or ``model`` (anything load_pipeline takes; None: the bundled toy
    world). The erased model: ``result`` (ErasureResult), ``delta`` (a delta file, its names, shapes and
    base-model fingerprint checked as ``apply``'s), ``erased``
    (a diffusers folder of the erased model), or ``method`` (erase here first with it); none of
    them: the base model itself. ``apply``: a delta, a partial UNet state dict (ESD's / UCE's
    scripts) or a LoRA file, checked against the base model (erase.reload.load_erasure). ``attack_configs``: {attack: overrides}. ``seeds``: scoring
    seeds. ``images``: the user's images of the concept (else the base model's). With ``out``
    the report (report.json, report.md) and image grids are written there. ``sampling_steps``:
    denoising steps of every scored or shown generation (None: the model's default). ``restarts``
    (toy world): run each attack that many times (attack seeds seed, seed + 1, ...) and report the
    attacker's best run, the lowest post-attack UA (see erase.attacks.run_attack). Returns the
    report (a dict; ``report["table"]`` is the text table).
    """
    from erase.attacks import check_restarts, erased_weights, make_config, run_attack
    from erase.methods import check_seed
    from erase.models import is_toyworld, load_pipeline

    start = time.perf_counter()
    given = [x for x in (delta, erased, result, method, apply) if x is not None]
    if len(given) > 1:
        raise EraseError("give at most one of delta, erased, result, method and apply")
    if method_config is not None and method is None:
        raise EraseError("method settings apply only when erasing here with a method (give method as well)")
    if method is not None and (method_config is None or isinstance(method_config, (str, Path, Mapping))):
        from erase.methods import precheck_config  # the name and settings before any slow work (a config object: erase_concepts)

        precheck_config(method, method_config, toyworld=model is None if pipe is None else is_toyworld(pipe))
    names = _parse_attacks(attacks)
    check_restarts(restarts)  # the type now, the toy-world condition once the model is known
    if sampling_steps is not None and (not isinstance(sampling_steps, int) or sampling_steps < 1):
        raise EraseError(f"sampling_steps must be a positive integer, got {sampling_steps!r}")
    sampling = {"steps": sampling_steps} if sampling_steps else {}
    try:
        seeds = [int(s) for s in seeds]  # numpy integers too
    except (TypeError, ValueError):
        raise EraseError(f"scoring seeds must be integers, got {list(seeds)!r}") from None
    if not seeds:
        raise EraseError("at least one seed is needed")
    for s in seeds:
        check_seed(s, "scoring seed")
    configs = {k.lower(): v for k, v in (attack_configs or {}).items()}
    unknown = [k for k in configs if k not in names]
    if unknown:
        raise EraseError(f"settings given for attack {unknown[0]!r}, which is not run (attacks: {', '.join(names) or 'none'})")
    if out is not None:
        from erase.export import check_output_path

        paths = [x for x in (model, delta, erased, apply) if isinstance(x, (str, Path))]
        check_output_path(out, overwrite, inputs=paths)
    base = pipe if pipe is not None else load_pipeline(model)
    toy = is_toyworld(base)
    from erase.attacks import check_attack_concept

    concept = check_attack_concept(base, concept)
    cfgs = {a: make_config(a, configs.get(a), toyworld=toy) for a in names}  # checked before any slow work
    check_restarts(restarts, toy or not names)
    for a, cfg in cfgs.items():  # restarts run with attack seeds seed .. seed + restarts - 1
        check_seed(cfg.seed + restarts - 1, f"{a}.seed + restarts - 1")

    target, weights, erasure_info = base, None, {"kind": "none (the base model itself)"}
    components = None  # what an erased folder changed (a result or file names its own)
    if apply is not None:
        from erase.reload import load_erasure

        result = load_erasure(base, apply, concepts=[concept])
        erasure_info = {"kind": "file", "path": str(apply), "file_kind": result.stats.get("file_kind"), "method": result.method,
                        "concepts": result.concepts}
    if method is not None:
        from erase.api import erase_concepts

        result = erase_concepts(base, [concept], method, method_config, progress=progress, inplace=False)
        erasure_info = {"kind": "method", "method": result.method, "config": result.config, "seconds": result.stats.get("seconds")}
    if result is not None:
        weights = result
        erasure_info = erasure_info if method is not None or apply is not None else {"kind": "result", "method": result.method}
    elif delta is not None and isinstance(delta, (str, Path)):
        from erase.reload import load_erasure

        weights = load_erasure(base, delta, concepts=[concept])  # names, shapes and the base model's fingerprint checked
        erasure_info = {"kind": "delta", "path": str(delta), "method": weights.method, "concepts": weights.concepts}
    elif delta is not None:
        weights = erased_weights(delta)
        erasure_info = {"kind": "delta", "method": getattr(weights, "method", None)}
    elif erased is not None:
        target = load_pipeline(erased)
        if type(target.unet.config) is not type(base.unet.config) or dict(target.unet.config) != dict(base.unet.config):
            raise EraseError(f"the erased model {erased} does not have the base model's UNet architecture")
        components = changed_components(base, target)
        erasure_info = {"kind": "folder", "path": str(erased), "changed": components}

    report: dict = {"model": getattr(getattr(base, "erase_info", None), "source", str(model)), "concept": concept,
                    "erasure": erasure_info, "seeds": seeds, "restarts": restarts, "toyworld": toy, "attacks": {}}
    judge = None
    if toy:
        from erase.toyworld.judge import load_judge
        from erase.toyworld.metrics import erasure_scores

        judge = load_judge()
        if names:
            report["base_UA"] = check_concept_drawn(base, concept, seeds, judge, sampling)
        with weights.applied(target) if weights is not None else nullcontext():
            if progress is not None:
                progress(0, 1, {"phase": "scores of the erased model"})
            report["scores"] = erasure_scores(target, concept, seeds=seeds, judge=judge, **sampling)
            if progress is not None:
                progress(1, 1, {"phase": "scores of the erased model"})

    data = AttackData(base, concept, images)  # the base model's images (the erased model is not used for data)
    results = {}
    for a in names:
        cfg = cfgs[a]
        res = run_attack(target, concept, a, cfg, erasure=weights, data=data.get(a, cfg, progress), seeds=seeds,
                         progress=progress, judge=judge, sampling=sampling, restarts=restarts, erased_components=components)
        results[a] = res
        report["attacks"][a] = res.summary()

    grids = {}
    if not toy or out is not None:
        grids = _grids(base, target, weights, concept, results, seeds, sampling_steps)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["table"] = format_table(report)
    if out is not None:
        from erase.export import atomic_path

        with atomic_path(out, overwrite) as tmp:
            tmp.mkdir(parents=True)
            for name, grid in grids.items():
                grid.save(tmp / f"grid_{name}.png")
            (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
            (tmp / "report.md").write_text(report["table"] + "\n")
    report["grids"] = grids
    return report


def _grids(base, target, weights, concept, results, seeds, steps=None) -> dict:
    """Per scoring prompt: before (base), after (erased), one row per attack; labelled."""
    from erase.attacks import attack_prompts
    from erase.evaluation import generate, image_grid

    prompts, img_seeds = attack_prompts(base, concept, seeds)
    n = min(len(prompts), 8)
    before = generate(base, prompts[:n], img_seeds[:n], steps=steps)
    with weights.applied(target) if weights is not None else nullcontext():
        after = generate(target, prompts[:n], img_seeds[:n], steps=steps)
    rows, labels = [before, after], ["before", "after"]
    for a, res in results.items():
        rows.append(res.images[:n])
        labels.append(f"{a}" + (f" UA {100 * res.ua:.0f}%" if res.ua is not None else ""))
    grids = {"attacks": image_grid(rows, labels, [f"{p} #{s}" for p, s in zip(prompts[:n], img_seeds[:n])])}
    for a, res in results.items():
        shown = res.prompts[:n]
        grids[f"prompts_{a}"] = image_grid([res.images[:n]], [a], shown)
    return grids


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(report: dict) -> str:
    """The report as a Markdown table (scores, then one line per attack)."""
    lines = [f"concept '{report['concept']}', erasure: {report['erasure'].get('method') or report['erasure']['kind']}, "
             f"seeds {report['seeds']}"]
    s = report.get("scores")
    if s:
        lines += ["", "| model | UA % | IRA % | CRA % | distance |", "| --- | --- | --- | --- | --- |",
                  f"| erased | {_pct(s['UA'])} | {_pct(s['IRA'])} | {_pct(s['CRA'])} | {s['distance']:.2f} |"]
    if report["attacks"]:
        n = report.get("restarts", 1)
        best = f" (best of {n} restarts)" if n > 1 else ""
        lines += ["", f"| attack | post-attack UA %{best} | attacked prompt (example) | seconds |", "| --- | --- | --- | --- |"]
        for a, r in report["attacks"].items():
            example = (r["prompts"] or [""])[0]
            runs = r["stats"].get("restarts")
            each = f" ({', '.join(_pct(u) for u in runs['UA'])})" if runs else ""
            lines.append(f"| {a} | {_pct(r['UA'])}{each} | {example} | {r['stats'].get('seconds', 0):.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Score an erasure and attack it (textual inversion, UnlearnDiffAtk-style prompt, relapse under fine-tuning).",
        epilog="Example: python scripts/evaluate.py --delta runs/no-square/delta.safetensors --concept square --attacks ti,prompt",
    )
    p.add_argument("--model", help="base model: Hub id, diffusers folder or .safetensors (default: the bundled toy world)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--delta", help="erasure as a delta file (scripts/erase.py's delta.safetensors)")
    g.add_argument("--erased", help="the erased model as a diffusers folder")
    g.add_argument("--method", help="erase here first with this method (any of scripts/erase.py's; its toy-world preset on the toy world)")
    g.add_argument("--apply", metavar="FILE", help="the erasure as a file: a delta, a partial UNet state dict in diffusers names "
                   "(ESD's / UCE's scripts) or a LoRA (kohya or diffusers layout); checked against --model")
    p.add_argument("--method-config", metavar="FILE", help="with --method: YAML file of its settings (see configs/)")
    p.add_argument("--method-set", action="append", metavar="KEY=VALUE",
                   help="with --method: override one of its settings, e.g. seed=1 (repeatable)")
    p.add_argument("--concept", required=True, help="the erased concept")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help="comma-separated: ti, prompt, relapse ('' for none; default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="scoring seeds (default: 0)")
    p.add_argument("--restarts", type=int, default=1, help="toy world: run each attack N times (attack seeds seed..seed+N-1) "
                   "and report the attacker's best run (default: 1)")
    p.add_argument("--sampling-steps", type=int, help="denoising steps of the scored and shown generations (default: the model's)")
    p.add_argument("--set", action="append", metavar="ATTACK.KEY=VALUE", help="override an attack setting, e.g. ti.steps=300 (repeatable)")
    p.add_argument("--config", help="YAML file {ti: {...}, prompt: {...}, relapse: {...}} of attack settings (see configs/attacks/)")
    p.add_argument("--out", help="write report.json, report.md and image grids into this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def attack_settings(config: str | None, sets: Sequence[str] | None) -> dict[str, dict]:
    from erase.cli import parse_value
    from erase.methods import read_yaml

    out: dict[str, dict] = {}
    if config:
        for k, v in read_yaml(config).items():
            if not isinstance(v, dict):
                raise EraseError(f"config file {config}: '{k}' must hold a mapping of settings")
            out.setdefault(str(k).lower(), {}).update(v)
    for pair in sets or []:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise EraseError(f"--set expects attack.key=value (e.g. ti.steps=300), got {pair!r}")
        key, value = pair.split("=", 1)
        attack, name = key.strip().split(".", 1)
        out.setdefault(attack.lower(), {})[name] = parse_value(value)
    return out


def method_settings(config: str | None, sets: Sequence[str] | None) -> dict | None:
    """--method-config and --method-set as one dict of the method's settings (None: neither given)."""
    from erase.cli import read_settings

    return read_settings(config, sets, "--method-set") if config is not None or sets else None


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    from erase.cli import TqdmProgress

    bar = TqdmProgress(not args.no_progress)
    try:
        method_config = method_settings(args.method_config, args.method_set)
        report = evaluate(args.model, concept=args.concept, delta=args.delta, erased=args.erased, method=args.method, apply=args.apply,
                          method_config=method_config,
                          attacks=args.attacks, attack_configs=attack_settings(args.config, args.set), seeds=args.seeds,
                          out=args.out, overwrite=args.overwrite, progress=bar, sampling_steps=args.sampling_steps,
                          restarts=args.restarts)
    except (EraseError, OSError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("error: interrupted", file=sys.stderr)
        return 130
    bar.close()
    report.pop("grids", None)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(report["table"])
        if args.out:
            print(f"report and grids in {args.out}")
    return 0
