"""The erasure tab's Robustness panel: attack the current erasure and show what comes back.

    rb = RobustnessCallbacks(diffusion_callbacks)       # ui.diffusion.DiffusionCallbacks
    rb.run(session, ["ti"], "circle", "0", "ti.steps=50", 25, 7.5, 3)   # last: restarts (toy world: the best of 3 runs)

For the concept picked from the session's erasure, the panel renders the attacked prompts'
plain versions with the base model ("original") and with the erasure ("erased"), then runs each
chosen attack (``erase.attacks.run_attack`` against ``session.result``) on the same prompts and
seeds. On the bundled toy world the judge scores every set: the erasure's UA and each attack's
post-attack UA on the same images' prompts and seeds. The base model is never modified: the
erasure goes in only through ``run_attack(erasure=result)`` / ``result.applied(pipe)`` under
``ENGINE_LOCK``, and the attacks swap their own weights out again (also when cancelled).
"""

from __future__ import annotations

import re
import time

import gradio as gr

from ui.diffusion import DiffusionCallbacks, parse_seeds, user_errors
from ui.state import ENGINE_LOCK, Session

ATTACK_LABELS = {
    "ti": "textual inversion (ti)",
    "prompt": "prompt attack (UnlearnDiffAtk-style)",
    "relapse": "relapse under benign fine-tuning",
}
UA_COLUMNS = ["model", "concept", "UA %", "images", "prompt (example)", "seconds"]
RENDER_CHUNK = 8  # images per generate() call between cancel checks


def attack_names() -> list[str]:
    from erase.attacks import available

    return available()


def attack_label(name: str) -> str:
    return ATTACK_LABELS.get(name, name)


def parse_attack_settings(text, names) -> dict[str, dict]:
    """'ti.steps=300, relapse.lr=1e-4' (commas, spaces or new lines between) -> {attack: overrides}.

    Settings of known attacks that are not run are ignored; an unknown attack is an EraseError.
    """
    from erase.attacks import available
    from erase.errors import EraseError
    from erase.robustness import attack_settings

    pairs = [p for p in re.split(r"[,\s]+", str(text or "")) if p]
    out = attack_settings(None, pairs)
    known = available()
    for attack in out:
        if attack not in known:
            raise EraseError(f"attack settings name the unknown attack {attack!r}; attacks: {', '.join(known)}")
    return {a: v for a, v in out.items() if a in names}


def _pct(x) -> float | None:
    return None if x is None else round(100 * float(x), 1)


class RobustnessCallbacks:
    """Callbacks of the Robustness panel; ``diffusion`` gives the model cache and the session's erasure."""

    def __init__(self, diffusion: DiffusionCallbacks, attacks: list[str] | None = None):
        self.diffusion = diffusion
        self.attacks = list(attacks) if attacks is not None else attack_names()

    # ---- widgets -----------------------------------------------------------------------
    def concept_choices(self, session: Session):
        """-> the concept dropdown: the current erasure's concepts (the first one chosen)."""
        concepts = list(session.result.concepts) if session.result is not None else []
        return gr.update(choices=concepts, value=concepts[0] if concepts else None)

    def cancel(self, session: Session):
        return self.diffusion.cancel(session)

    # ---- run ---------------------------------------------------------------------------
    def _checked(self, session: Session, attacks, concept):
        """(pipe, result, attack names, concept) or gr.Error, before any slow work."""
        pipe = self.diffusion.pipe_for(session)
        result = session.result
        if result is None:
            raise gr.Error("erase a concept first: the attacks run against the current erasure",
                           title="Nothing to attack", print_exception=False)
        names = [attacks] if isinstance(attacks, str) else list(attacks or [])
        names = list(dict.fromkeys(str(a).strip().lower() for a in names if str(a).strip()))
        if not names:
            raise gr.Error("choose at least one attack", title="No attack chosen", print_exception=False)
        unknown = [a for a in names if a not in self.attacks]
        if unknown:
            raise gr.Error(f"unknown attack {unknown[0]!r}; choose from {', '.join(self.attacks)}",
                           title="Unknown attack", print_exception=False)
        concept = str(concept or "").strip() or result.concepts[0]
        match = [c for c in result.concepts if c.strip().lower() == concept.lower()]
        if not match:
            raise gr.Error(f"{concept!r} is not a concept of the current erasure ({', '.join(result.concepts)})",
                           title="Not erased", print_exception=False)
        return pipe, result, names, match[0]

    def run(self, session: Session, attacks, concept, seeds_text, settings_text="", steps=None, guidance=None, restarts=1,
            progress=gr.Progress()):
        """-> status markdown, UA table rows, original gallery, erased gallery, one gallery per
        attack in ``self.attacks`` (empty for attacks not run), details (dict)."""
        from erase.attacks import attack_prompts, check_attack_concept, check_restarts, judge_ua, make_config, run_attack
        from erase.robustness import AttackData
        from erase.evaluation import generate, sampling_defaults
        from erase.models import is_toyworld
        from erase.training import Cancelled

        pipe, result, names, concept = self._checked(session, attacks, concept)
        seeds = parse_seeds(seeds_text)
        with user_errors("attack the erasure"):
            toy = is_toyworld(pipe)
            samp = sampling_defaults(pipe)
            if steps:
                samp["steps"] = int(steps)
            if guidance is not None:
                samp["guidance_scale"] = float(guidance)
            restarts = 1 if restarts is None else int(restarts)
            check_restarts(restarts, toy)
            overrides = parse_attack_settings(settings_text, names)
            cfgs = {a: make_config(a, overrides.get(a), toyworld=toy) for a in names}  # bad settings: before slow work
            target = check_attack_concept(pipe, concept)
            judge = None
            if toy:
                from erase.toyworld.judge import load_judge

                judge = load_judge()

        session.cancel.clear()
        progress(0, desc="starting")
        start = time.perf_counter()

        def check_cancel():
            if session.cancel.is_set():
                raise Cancelled()

        def reporter(i: int, attack: str):
            def report(done, total, info):
                check_cancel()
                phase = info.get("phase", "")
                loss = f" (loss {info['loss']:.4g})" if "loss" in info else ""
                progress((done, total), desc=f"attack {i + 1}/{len(names)} · {attack}: {phase}{loss}", unit="steps")
            return report

        try:
            with user_errors("attack the erasure"), ENGINE_LOCK:
                prompts, img_seeds = attack_prompts(pipe, target, seeds)
                total = 2 * len(prompts)

                def render(label: str, offset: int) -> list:
                    images = []
                    for j in range(0, len(prompts), RENDER_CHUNK):
                        check_cancel()
                        progress((offset + j, total), desc=f"rendering the {label} model", unit="images")
                        images += generate(pipe, prompts[j : j + RENDER_CHUNK], img_seeds[j : j + RENDER_CHUNK],
                                           steps=samp["steps"], guidance_scale=samp["guidance_scale"])
                    return images

                before = render("original", 0)
                with result.applied(pipe):  # one swap in and out for all the erased images
                    after = render("erased", len(prompts))
                data = AttackData(pipe, target)  # the base model's images, shared by attacks that need the same
                outcomes = {}
                for i, a in enumerate(names):
                    cfg = cfgs[a]
                    outcomes[a] = run_attack(pipe, target, a, cfg, erasure=result, data=data.get(a, cfg, reporter(i, a)), seeds=seeds,
                                             progress=reporter(i, a), judge=judge, sampling=samp, restarts=restarts)
                ua_before = judge_ua(before, target, judge) if toy else None
                ua_after = judge_ua(after, target, judge) if toy else None
        except Cancelled:
            raise gr.Error("Attack cancelled: the model is unchanged.", title="Cancelled", print_exception=False) from None
        progress(1, desc="done")

        def caption(prompt, seed):
            return f"{prompt} · seed {seed}"

        galleries = {a: [(im, caption(p, s)) for im, p, s in zip(r.images, r.prompts, r.seeds)] for a, r in outcomes.items()}
        n = len(prompts)
        rows = [["original", target, _pct(ua_before), n, prompts[0], None],
                [f"erased ({result.method})", target, _pct(ua_after), n, prompts[0], None]]
        best = f" (best of {restarts})" if restarts > 1 else ""
        for a, r in outcomes.items():
            rows.append([f"{a} attack{best}", target, _pct(r.ua), len(r.images), r.prompts[0] if r.prompts else "",
                         r.stats.get("seconds")])
        status = (f"**Attacked** the erasure of '{target}' ({result.method}) with {', '.join(names)} in "
                  f"{time.perf_counter() - start:.0f} s: {n} images per gallery (prompts × seeds, the same in every gallery), "
                  f"{samp['steps']} sampling steps. The base model is unchanged.")
        if toy:
            status += (f" **UA** (share the judge does not call '{target}'; lower after an attack = the concept came back): "
                       f"erased {_pct(ua_after)} %, " + ", ".join(f"after {a} {_pct(r.ua)} %" for a, r in outcomes.items()) + ".")
            if restarts > 1:
                status += (f" Each attack ran {restarts} times from the same images with successive attack seeds; the "
                           "galleries show its best run (post-attack UA of the runs: "
                           + "; ".join(f"{a} " + ", ".join(f"{_pct(u)} %" for u in r.stats["restarts"]["UA"]) for a, r in outcomes.items()) + ").")
        else:
            status += " Post-attack UA needs the judge of the bundled toy world: compare the images."
        details = {a: {"config": r.config, "stats": r.stats,
                       "learned": {k: v for k, v in r.learned.items() if isinstance(v, (str, int, float, list))}}
                   for a, r in outcomes.items()}
        before_items = [(im, caption(p, s)) for im, p, s in zip(before, prompts, img_seeds)]
        after_items = [(im, caption(p, s)) for im, p, s in zip(after, prompts, img_seeds)]
        return (status, rows, before_items, after_items, *[galleries.get(a, []) for a in self.attacks], details)
