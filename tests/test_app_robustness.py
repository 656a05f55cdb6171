"""The erasure tab's Robustness panel (ui/robustness.py): attacks against the tab's erasure.

Runs on the bundled toy-world model when its weights are present (post-attack UA from the judge),
else on a tiny random pipeline (images only). Attack settings are tiny (2 steps, 2 images) so
each run takes seconds; the sampling steps are 2.
"""

from __future__ import annotations

import time

import gradio as gr
import pytest
import torch

from conftest import bundled_available, free_port, images_equal

# every attack at 2 optimisation steps on 2 base-model images made with 2 sampling steps
TINY = ("ti.steps=2 ti.n_images=2 ti.generation_steps=2 ti.batch_size=2, "
        "prompt.steps=2 prompt.k=2 prompt.n_images=2 prompt.generation_steps=2 prompt.batch_size=2 prompt.eval_every=1 prompt.eval_items=2, "
        "relapse.steps=2 relapse.n_images=2 relapse.generation_steps=2 relapse.batch_size=2 relapse.lr=1e-3")
STEPS, GUIDANCE = 2, 7.5


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """'' (the bundled model) when its weights exist, else a tiny random pipeline folder."""
    if bundled_available():
        return ""
    from erase.synthetic import save_pipeline_folder

    folder = tmp_path_factory.mktemp("tinypipe") / "pipe"
    save_pipeline_folder("tiny", folder)
    print(f"\n[test_app_robustness] bundled weights absent: tiny random pipeline at {folder}")
    return str(folder)


@pytest.fixture(scope="module")
def concept(model) -> str:
    return "circle" if model == "" else "van gogh"


@pytest.fixture(scope="module")
def panel(model):
    """(robustness callbacks, diffusion callbacks) on a model cache of their own."""
    from ui.diffusion import DiffusionCallbacks
    from ui.robustness import RobustnessCallbacks
    from ui.settings import all_settings
    from ui.state import ModelCache

    cb = DiffusionCallbacks(ModelCache(), all_settings(["uce"]))
    return RobustnessCallbacks(cb), cb


@pytest.fixture(scope="module")
def erasure(panel, model, concept):
    """A UCE erasure of the concept (seconds), made on the panel's cached pipeline."""
    from erase.api import erase_concepts
    from ui.state import model_key

    cb = panel[1]
    pipe = cb.cache.get(model_key(model))
    return erase_concepts(pipe, [concept], "uce", inplace=False)


def session_with(model, result=None):
    from ui.state import Session, model_key

    s = Session()
    s.model = model_key(model)
    s.result = result
    return s


def weights(pipe) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    out.update({f"text_encoder.{k}": v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()})
    return out


def assert_unchanged(pipe, before: dict[str, torch.Tensor]) -> None:
    after = weights(pipe)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the model was left modified: {changed[:3]}"


class Recorder:
    """Stands in for gr.Progress: records (value, desc); ``on_call`` may act on each call."""

    def __init__(self, on_call=None):
        self.calls: list[tuple] = []
        self.on_call = on_call

    def __call__(self, value, desc=None, total=None, unit="steps"):
        self.calls.append((value, desc or ""))
        if self.on_call is not None:
            self.on_call(value, desc or "")


def test_panel_attacks_the_erasure_and_shows_images_and_ua(panel, erasure, model, concept):
    from erase.evaluation import generate

    rb, cb = panel
    pipe = cb.cache.get(model)
    session = session_with(model, erasure)
    before_weights = weights(pipe)
    rec = Recorder()
    restarts = 2 if model == "" else 1  # toy world: each attack twice, the attacker's best run shown
    out = rb.run(session, ["ti", "relapse"], concept, "0", TINY, STEPS, GUIDANCE, restarts, progress=rec)
    status, rows, original, erased, *rest = out
    galleries, details = dict(zip(rb.attacks, rest[:-1])), rest[-1]
    assert len(rest) == len(rb.attacks) + 1
    assert concept in status and "ti" in status and "relapse" in status
    assert_unchanged(pipe, before_weights)

    n = 18 if model == "" else 4  # toy world: every combination naming the concept; else 4 template prompts
    assert len(original) == len(erased) == len(galleries["ti"]) == len(galleries["relapse"]) == n
    assert galleries["prompt"] == []  # not chosen: not run
    seeds_of = [c.rsplit(" · seed ", 1)[1] for _, c in original]
    assert [c for _, c in original] == [c for _, c in erased]
    for a in ("ti", "relapse"):
        assert [c.rsplit(" · seed ", 1)[1] for _, c in galleries[a]] == seeds_of  # same seeds for every gallery
    # textual inversion's prompts carry the learned token instead of the word; relapse keeps the plain prompts
    assert all("<ti-0>" in c and concept not in c for _, c in galleries["ti"])
    assert [c for _, c in galleries["relapse"]] == [c for _, c in original]

    # original and erased are the base model and the erasure on those prompts and seeds
    prompts = [c.rsplit(" · seed ", 1)[0] for _, c in original]
    seeds = [int(s) for s in seeds_of]
    assert images_equal([im for im, _ in original], generate(pipe, prompts, seeds, steps=STEPS, guidance_scale=GUIDANCE))
    assert images_equal([im for im, _ in erased], generate(pipe, prompts, seeds, steps=STEPS, guidance_scale=GUIDANCE, result=erasure))

    best = " (best of 2)" if restarts == 2 else ""
    assert [r[0] for r in rows] == ["original", "erased (uce)", f"ti attack{best}", f"relapse attack{best}"]
    assert all(r[1] == concept for r in rows)
    if restarts == 2:
        runs = details["ti"]["stats"]["restarts"]
        assert len(runs["UA"]) == 2 and rows[2][2] == pytest.approx(100 * min(runs["UA"]), abs=0.05) and "ran 2 times" in status
    if model == "":  # the judge's UA, in %, for the erasure and after each attack
        for r in rows:
            assert isinstance(r[2], float) and 0.0 <= r[2] <= 100.0, r
        from erase.toyworld.metrics import erasure_scores

        with erasure.applied(pipe):
            ua = 100 * erasure_scores(pipe, concept, seeds=[0], steps=STEPS, guidance=GUIDANCE)["UA"]
        assert abs(rows[1][2] - ua) <= 100 / 18 + 1e-6  # the erasure's UA as the judge scores it (batching may move one image)
        assert "UA" in status
    else:
        assert all(r[2] is None for r in rows) and "toy world" in status
    assert set(details) == {"ti", "relapse"} and details["ti"]["config"]["steps"] == 2  # the settings were applied
    descs = [d for _, d in rec.calls]
    first = "ti: restart 1/2: attack: textual inversion" if restarts == 2 else "ti: attack: textual inversion"
    assert any(first in d for d in descs) and any("relapse" in d for d in descs)


def test_errors_are_one_line_messages(panel, erasure, model, concept):
    rb, _ = panel
    from ui.state import Session

    with pytest.raises(gr.Error, match="load a model first"):
        rb.run(Session(), ["ti"], concept, "0", TINY, STEPS, GUIDANCE, progress=Recorder())
    cases = [
        (session_with(model), ["ti"], concept, TINY, "erase a concept first"),
        (session_with(model, erasure), [], concept, TINY, "at least one attack"),
        (session_with(model, erasure), ["ti"], "zebra", TINY, "not a concept of the current erasure"),
        (session_with(model, erasure), ["ti"], concept, "ti.nope=1", "unknown setting"),
        (session_with(model, erasure), ["ti"], concept, "tii.steps=1", "unknown attack"),
        (session_with(model, erasure), ["ti"], concept, "ti.steps=0", "steps"),
    ]
    for session, attacks, c, settings, message in cases:
        rec = Recorder()
        with pytest.raises(gr.Error, match=message) as e:
            rb.run(session, attacks, c, "0", settings, STEPS, GUIDANCE, progress=rec)
        assert "\n" not in e.value.message
        assert rec.calls == []  # refused before any work
    bad_restarts = [(0, "restarts must be a positive integer")] + ([] if model == "" else [(2, "toy world's judge")])
    for restarts, message in bad_restarts:
        rec = Recorder()
        with pytest.raises(gr.Error, match=message) as e:
            rb.run(session_with(model, erasure), ["ti"], concept, "0", TINY, STEPS, GUIDANCE, restarts, progress=rec)
        assert "\n" not in e.value.message
        assert rec.calls == []  # refused before any work


@pytest.mark.parametrize("attack", ["ti", "prompt", "relapse"])
def test_cancel_stops_the_attack_and_leaves_the_model_unchanged(panel, erasure, model, concept, attack):
    rb, cb = panel
    pipe = cb.cache.get(model)
    session = session_with(model, erasure)
    before = weights(pipe)
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    training = pipe.unet.training
    steps_seen = []

    def on_call(value, desc):  # the user presses Cancel once the attack's optimisation has taken a step
        if f"{attack}: attack" in desc:
            steps_seen.append(value[0])
            if value[0] == 1:
                assert "Cancelling" in rb.cancel(session)

    settings = TINY.replace(f"{attack}.steps=2", f"{attack}.steps=500")
    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="cancelled") as e:
        rb.run(session, [attack], concept, "0", settings, STEPS, GUIDANCE, progress=Recorder(on_call))
    assert "unchanged" in e.value.message
    assert steps_seen == [1], f"the attack went on after Cancel: steps {steps_seen}"
    assert time.perf_counter() - t0 < 120
    assert_unchanged(pipe, before)  # the erasure and any fine-tuned weights were swapped out again
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags and pipe.unet.training == training
    # the next run starts afresh (the cancel flag is cleared)
    out = rb.run(session, [attack], concept, "0", TINY, STEPS, GUIDANCE, progress=Recorder())
    assert len(out[4 + rb.attacks.index(attack)]) == len(out[2]) > 0
    assert_unchanged(pipe, before)


def test_concept_choices_follow_the_erasure(panel, erasure, model, concept):
    rb, _ = panel
    update = rb.concept_choices(session_with(model, erasure))
    assert update["choices"] == [concept] and update["value"] == concept
    update = rb.concept_choices(session_with(model))
    assert update["choices"] == [] and update["value"] is None


# ---- through the served app ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    pytest.importorskip("gradio_client")
    from ui.app import build_app

    demo = build_app(model, work_root=tmp_path_factory.mktemp("exports"), classifier=False, judge_steps=2)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


def test_app_panel_runs_and_cancels(server, model, concept):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    demo, url = server
    client = Client(url, verbose=False)
    loaded = client.predict(model, api_name="/load_model")
    with pytest.raises(AppError, match="erase a concept first"):
        client.predict(["ti"], concept, "0", TINY, STEPS, GUIDANCE, api_name="/run_attacks")
    values = list(loaded[4:])  # the settings widgets as loaded: UCE's defaults (presets on the bundled model)
    status, _ = client.predict([concept], "uce", *values, api_name="/erase")
    assert "Erased" in status

    out = client.predict(["ti"], concept, "0", TINY, STEPS, GUIDANCE, api_name="/run_attacks")
    status, table, original, erased, *rest = out
    ti = rest[demo.robustness_callbacks.attacks.index("ti")]
    assert len(original) == len(erased) == len(ti) > 0
    assert all("<ti-0>" in item["caption"] for item in ti)
    rows = table["data"]
    assert [r[0] for r in rows] == ["original", "erased (uce)", "ti attack"]
    if model == "":
        assert all(0.0 <= float(r[2]) <= 100.0 for r in rows)

    pipe = demo.erase_cache.get(model)
    before = weights(pipe)
    job = client.submit(["relapse"], concept, "0", TINY.replace("relapse.steps=2", "relapse.steps=2000"), STEPS, GUIDANCE,
                        api_name="/run_attacks")
    deadline = time.time() + 120
    while time.time() < deadline:
        st = job.status()
        if st.progress_data and any("relapse fine-tuning" in (p.desc or "") for p in st.progress_data):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the attack never reported progress: {job.status()}")
    assert "Cancelling" in client.predict(api_name="/cancel_attacks")
    with pytest.raises(AppError, match="cancelled"):
        job.result(timeout=60)
    assert_unchanged(pipe, before)
