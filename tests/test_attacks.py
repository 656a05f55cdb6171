"""Attacks (erase.attacks): mechanics and determinism on the tiny pipeline, and the sanity check on
the bundled model that textual inversion brings back a concept whose word is removed."""

import pytest
import torch

from erase.attacks import available, make_config, run_attack
from erase.errors import EraseError

from conftest import bundled_available, images_equal

TINY = {
    "ti": dict(steps=3, n_images=2, generation_steps=2, batch_size=2),
    "prompt": dict(steps=3, k=2, n_images=2, generation_steps=2, batch_size=2, eval_every=2, eval_items=2),
    "relapse": dict(steps=3, n_images=2, generation_steps=2, batch_size=2, lr=1e-3),
}
SAMPLING = {"steps": 2}


def _state(pipe):
    out = {f"unet.{k}": v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    out.update({f"te.{k}": v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()})
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_and_config_errors():
    assert available() == ["prompt", "relapse", "ti"]
    assert make_config("ti").steps == 1000 and make_config("ti", toyworld=True).steps == 150
    for name, over, message in [
        ("ti", {"steps": 0}, "steps"), ("ti", {"nope": 1}, "unknown setting"), ("prompt", {"k": -1}, "k"),
        ("relapse", {"scope": "everything"}, "scope"), ("ti", {"lr": "fast"}, "lr"), ("gcg", None, "unknown attack"),
        # caught here, not after the other attacks have run: 0 for "no clipping", infinities, NaN, seeds numpy refuses
        ("relapse", {"grad_clip": 0}, "grad_clip must be a positive number"), ("ti", {"lr": float("inf")}, "lr"),
        ("ti", {"weight_decay": float("nan")}, "weight_decay must be a number >= 0"), ("ti", {"seed": -1}, "seed must be an integer from 0"),
    ]:
        with pytest.raises(EraseError, match=message) as e:
            make_config(name, over)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("attack", ["ti", "prompt", "relapse"])
def test_attack_mechanics_deterministic_pipe_unchanged(tiny_pipe, attack):
    before, vocab = _state(tiny_pipe), len(tiny_pipe.tokenizer)
    # an "erasure": one cross-attention key projection scaled, swapped in only during the attack
    name = next(n for n, _ in tiny_pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight"))
    erasure = {name: dict(tiny_pipe.unet.named_parameters())[name].detach() * 0.5}
    a = run_attack(tiny_pipe, "van gogh", attack, TINY[attack], erasure=erasure, seeds=[0], sampling=SAMPLING)
    assert _same(before, _state(tiny_pipe)) and len(tiny_pipe.tokenizer) == vocab
    b = run_attack(tiny_pipe, "van gogh", attack, TINY[attack], erasure=erasure, seeds=[0], sampling=SAMPLING)
    assert images_equal(a.images, b.images) and a.prompts == b.prompts
    assert a.ua is None and len(a.images) == len(a.eval_prompts) == len(a.prompts) == 4
    assert a.summary()["attack"] == attack
    if attack == "ti":
        assert a.learned["vectors"].shape == (1, tiny_pipe.text_encoder.config.hidden_size)
        assert all("<ti-0>" in p and "van gogh" not in p for p in a.prompts)
    if attack == "prompt":
        assert len(a.learned["token_ids"]) == 2 and all(p.endswith(q.replace("van gogh", "").strip()) for p, q in zip(a.prompts, a.eval_prompts))


def test_attack_bad_input(tiny_pipe):
    with pytest.raises(EraseError, match="vocabulary"):
        run_attack(tiny_pipe, "§§", "ti", TINY["ti"])
    with pytest.raises(EraseError, match="erasure must be"):
        run_attack(tiny_pipe, "van gogh", "ti", TINY["ti"], erasure=3)
    with pytest.raises(EraseError, match="not found"):
        run_attack(tiny_pipe, "van gogh", "ti", TINY["ti"], erasure="missing.safetensors")
    with pytest.raises(EraseError, match="restarts must be a positive integer, got 0"):
        run_attack(tiny_pipe, "van gogh", "ti", TINY["ti"], restarts=0)
    with pytest.raises(EraseError, match="needs the toy world's judge"):
        run_attack(tiny_pipe, "van gogh", "ti", TINY["ti"], restarts=2)


@pytest.fixture(scope="module")
def bundled():
    """The bundled model and 16 of its own images of 'square' (shared by the sanity checks)."""
    from erase.attacks import concept_data
    from erase.models import load_pipeline

    pipe = load_pipeline(None)
    return pipe, concept_data(pipe, "square", make_config("ti", {"n_images": 16}, toyworld=True))


@pytest.mark.skipif(not bundled_available(), reason="bundled toy-world model missing")
@pytest.mark.parametrize("attack, cfg", [
    ("ti", dict(steps=60, batch_size=8, lr=1e-2)),
    # found "square" itself at step 40-80 (measured); ~30 s, so marked slow
    pytest.param("prompt", dict(steps=80, batch_size=8, eval_every=10, eval_items=8), marks=pytest.mark.slow),
])
def test_attack_brings_back_a_removed_word_on_the_bundled_model(bundled, attack, cfg):
    """Sanity: against the unerased model, with the concept's word removed (replaced by one
    learned token from a random start, or by a found prefix), the judge sees the concept again."""
    pipe, data = bundled
    res = run_attack(pipe, "square", attack, cfg, data=data, seeds=[0])
    # the word is gone from each prompt; the prompt attack's own k-token prefix may find it again
    k = make_config(attack, cfg, toyworld=True).k if attack == "prompt" else 0
    assert len(res.images) == 18 and all("square" not in q.split(" ", k)[-1] for q in res.prompts), res.prompts[0]
    assert res.ua <= 0.2, (res.ua, res.prompts[0])

@pytest.mark.skipif(not bundled_available(), reason="bundled toy-world model missing")
def test_restarts_keep_the_attackers_best_run(bundled):
    """Two runs from the same images with attack seeds 3 and 4: the result is the lower post-attack
    UA of the two, and the run with seed 4 alone gives the same UA as the second restart."""
    pipe, data = bundled
    cfg = dict(steps=5, batch_size=4, lr=1e-2, seed=3)
    best = run_attack(pipe, "square", "ti", cfg, data=data, seeds=[0], sampling=SAMPLING, restarts=2)
    runs = best.stats["restarts"]
    assert runs["seeds"] == [3, 4] and best.ua == min(runs["UA"]) and best.config["seed"] in (3, 4)
    second = run_attack(pipe, "square", "ti", dict(cfg, seed=4), data=data, seeds=[0], sampling=SAMPLING)
    assert second.ua == runs["UA"][1]


def test_config_files_hold_the_defaults():
    from pathlib import Path

    from erase.attacks import get
    from erase.robustness import attack_settings

    folder = Path(__file__).resolve().parents[1] / "configs" / "attacks"
    for name in available():
        values = attack_settings(str(folder / f"{name}.yaml"), None)[name]
        assert make_config(name, values) == make_config(name)
        assert attack_settings(str(folder / "toyworld.yaml"), None)[name] == get(name).toyworld
