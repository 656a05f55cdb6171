"""ESD (Gandikota et al., 2023): what it may change, what it learns, bad input, reproducibility,
and a short erasure on the bundled toy world scored by the judge."""

import contextlib

import pytest
import torch

from conftest import bundled_available
from erase.api import erase_concepts
from erase.errors import EraseError

FAST_ESD = dict(iterations=4, lr=1e-3, ddim_steps=3, batch_size=2)
TOY_TEST = dict(lr=2e-3, iterations=15)  # over the toy-world preset (ESD-x against the prompt without the concept)


def _unet_state(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def _changed(before, pipe):
    return {n for n, p in pipe.unet.named_parameters() if not torch.equal(before[n], p.detach())}


def test_defaults_are_the_papers_and_variants_map_to_scopes():
    from erase import methods

    cfg = methods.make_config("esd")
    assert (cfg.iterations, cfg.lr, cfg.optimizer, cfg.batch_size) == (1000, 1e-5, "adam", 1)
    assert (cfg.negative_guidance, cfg.ddim_steps, cfg.guidance_scale, cfg.grad_clip) == (1.0, 50, 3.0, None)
    scopes = {m: methods.make_config("esd", {"train_method": m}).parameter_scope() for m in ("xattn", "noxattn", "full", "kv")}
    assert scopes == {"xattn": "cross_attn", "noxattn": "no_cross_attn", "full": "full", "kv": "cross_attn_kv"}


def test_esd_x_changes_only_cross_attention(tiny_pipe):
    before = _unet_state(tiny_pipe)
    r = erase_concepts(tiny_pipe, "van gogh", "esd", dict(FAST_ESD, train_method="xattn"))
    changed = _changed(before, tiny_pipe)
    assert changed and all(".attn2." in n for n in changed)
    assert changed == set(r.tensors)
    assert len(changed) == sum(".attn2." in n for n in before)  # every attn2 tensor moved


def test_esd_u_never_changes_cross_attention(tiny_pipe):
    before = _unet_state(tiny_pipe)
    r = erase_concepts(tiny_pipe, "van gogh", "esd", dict(FAST_ESD, train_method="noxattn"))
    changed = _changed(before, tiny_pipe)
    assert changed == set(r.tensors) and len(changed) > 10
    assert not any(".attn2." in n for n in changed)
    # as the reference's ESD-u: the time embedding and the output layers stay too
    assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in changed)
    assert any(".attn1." in n for n in changed) and any(".resnets." in n for n in changed)


@torch.no_grad()
def _predictions(pipe, prompts, n=12, seed=0):
    """eps(x_t, c) and eps(x_t, empty) on fixed random latents and timesteps (prompts cycled)."""
    from erase.data import encode_prompts

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 4, 8, 8), generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    cond = encode_prompts(pipe, [prompts[i % len(prompts)] for i in range(n)])[0]
    uncond = encode_prompts(pipe, [""])[0].expand(n, -1, -1)
    return pipe.unet(x, t, encoder_hidden_states=cond).sample, pipe.unet(x, t, encoder_hidden_states=uncond).sample


def _dist(a, b):
    return float((a - b).flatten(1).norm(dim=1).mean())


def test_eta_zero_pulls_the_concept_towards_the_unconditional_prediction(tiny_pipe):
    """With η = 0 the target is the frozen model's unconditional prediction: afterwards the
    concept's prediction sits close to it (η = 1 would push it past, as far as it was)."""
    prompts = ["a photo of van gogh", "a painting of van gogh", "van gogh"]
    c0, u0 = _predictions(tiny_pipe, prompts)
    r = erase_concepts(tiny_pipe, "van gogh", "esd", dict(FAST_ESD, iterations=60, lr=3e-3, ddim_steps=2,
                                                          negative_guidance=0.0, train_method="xattn"))
    c1, _ = _predictions(tiny_pipe, prompts)
    assert _dist(c1, u0) < 0.4 * _dist(c0, u0), (_dist(c0, u0), _dist(c1, u0))
    assert r.stats["target_error_after"] < 0.5 * r.stats["target_error_before"]
    assert r.stats["loss_last"] < r.stats["loss_first"]


@pytest.mark.parametrize("neutral", ["empty", "prompt"])
def test_frozen_predictions_belong_to_their_x_t(tiny_pipe, neutral):
    """The precomputed eps*(x_t, c) and neutral eps*(x_t, empty) (or eps*(x_t, c without the
    concept)) are the frozen model's at (x_t, t), t is a DDIM timestep of the partial run, and
    the steps alternate between the concepts."""
    from diffusers import DDIMScheduler

    from erase import methods
    from erase.data import encode_prompts
    from erase.methods import esd
    from erase.methods.job import ErasureJob
    from erase.prompts import prompt_source_for

    cfg = methods.make_config("esd", dict(FAST_ESD, iterations=6, ddim_steps=4, neutral=neutral))
    job = ErasureJob(pipe=tiny_pipe, concepts=["van gogh", "circle"], prompts=prompt_source_for(tiny_pipe))
    gen = torch.Generator().manual_seed(0)
    prompts, neutral_prompts, index = esd.plan(job, cfg, gen)
    named = [["van gogh", "circle"][int("circle" in prompts[i])] for i in index]
    assert named == [["van gogh", "circle"][s % 2] for s in range(6) for _ in range(2)]
    if neutral == "empty":
        assert set(neutral_prompts) == {""}
    else:
        assert neutral_prompts[prompts.index("a photo of van gogh")] == "a photo of"
        assert not any("van gogh" in p or "circle" in p for p in neutral_prompts)
    cond, neut = encode_prompts(tiny_pipe, prompts)[0], encode_prompts(tiny_pipe, neutral_prompts)[0]
    items = esd.sample_items(job, cfg, cond, neut, index, gen, contextlib.nullcontext)
    sched = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    sched.set_timesteps(cfg.ddim_steps)
    assert set(items.t.tolist()) <= set(sched.timesteps.tolist()) and len(set(items.t.tolist())) > 1
    with torch.no_grad():
        e_c = tiny_pipe.unet(items.x_t, items.t, encoder_hidden_states=cond[items.prompt]).sample
        e_n = tiny_pipe.unet(items.x_t, items.t, encoder_hidden_states=neut[items.prompt]).sample
    assert torch.allclose(e_c, items.eps_c, atol=1e-5) and torch.allclose(e_n, items.eps_n, atol=1e-5)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"negative_guidance": -1.0}, "negative_guidance must be >= 0 .*got -1.0"),
        ({"train_method": "attn"}, "train_method must be one of xattn, noxattn, full, kv, got 'attn'"),
        ({"iterations": 0}, "iterations must be a positive integer, got 0"),
        ({"ddim_steps": -5}, "ddim_steps must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
        ({"grad_clip": 0.0}, "grad_clip must be a positive number"),
        ({"neutral": "nothing"}, "neutral must be empty or prompt, got 'nothing'"),
        ({"scope": "full"}, "unknown setting"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(tiny_pipe, config, message):
    before = _unet_state(tiny_pipe)
    calls = []
    with pytest.raises(EraseError, match=message) as e:
        erase_concepts(tiny_pipe, "van gogh", "esd", dict(FAST_ESD, **config), progress=lambda *a: calls.append(a))
    assert "\n" not in str(e.value) and not calls
    assert not _changed(before, tiny_pipe)


def test_reproducible_with_a_seed(tiny_folder):
    from erase.models import load_pipeline

    a = erase_concepts(load_pipeline(tiny_folder), "van gogh", "esd", FAST_ESD)
    b = erase_concepts(load_pipeline(tiny_folder), "van gogh", "esd", FAST_ESD)
    c = erase_concepts(load_pipeline(tiny_folder), "van gogh", "esd", dict(FAST_ESD, seed=1))
    assert set(a.tensors) == set(b.tensors) and a.tensors
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not all(torch.equal(a.tensors[k], c.tensors[k]) for k in a.tensors)


def test_progress_reports_sampling_then_training_and_cancel_restores(tiny_pipe):
    from erase.training import Cancelled

    before = _unet_state(tiny_pipe)
    phases = []

    def progress(done, total, info):
        phases.append(info["phase"])
        if info["phase"] == "esd" and done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        erase_concepts(tiny_pipe, "van gogh", "esd", FAST_ESD, progress=progress)
    assert phases[0] == "esd: sampling x_t" and phases[-1] == "esd"
    assert not _changed(before, tiny_pipe)


@pytest.mark.skipif(not bundled_available(), reason="bundled toy-world weights missing")
def test_toyworld_esd_erases_square_and_keeps_circle():
    """A short ESD-x run on the bundled model: the judge stops seeing squares, circles stay."""
    from erase import load_pipeline
    from erase.toyworld import SHAPES, prompts_for
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import generate

    pipe, judge = load_pipeline(None), load_judge()

    def shape_prob(prompts, shape):
        """The judge's mean probability of ``shape`` on generations for ``prompts``."""
        images = generate(pipe, prompts, list(range(len(prompts))), steps=10)
        return float(judge.logits(images)["shape"].softmax(1)[:, SHAPES.index(shape)].mean())

    square, circle = prompts_for("square")[::3], prompts_for("circle")[::3]
    before = shape_prob(square, "square"), shape_prob(circle, "circle")
    result = erase_concepts(pipe, "square", "esd", dict(TOY_TEST), inplace=False)
    with result.applied(pipe):
        after = shape_prob(square, "square"), shape_prob(circle, "circle")
    assert before[0] > 0.8 and before[1] > 0.8, before
    assert after[0] < 0.4, (before, after)  # measured 0.08
    assert after[1] > 0.85, (before, after)  # measured 0.98

