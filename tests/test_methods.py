import pytest
import torch

from conftest import FAST_FMN, FAST_SALUN
from erase.api import erase_concepts
from erase.errors import EraseError
from erase.training import Cancelled


def _unet_state(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def test_fmn_lowers_concept_attention(tiny_pipe):
    r = erase_concepts(tiny_pipe, "van gogh", "fmn", dict(FAST_FMN, steps=8))
    assert r.stats["attention_mass_after"] < 0.8 * r.stats["attention_mass_before"]
    assert r.stats["loss_last"] < r.stats["loss_first"]
    assert r.tensors and set(r.tensors) == set(r.original)


def test_scope_limits_what_changes(tiny_pipe):
    before = _unet_state(tiny_pipe)
    r = erase_concepts(tiny_pipe, "van gogh", "fmn", dict(FAST_FMN, scope="cross_attn_kv"))
    after = _unet_state(tiny_pipe)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    assert changed == set(r.tensors)


def test_salun_moves_only_salient_weights(tiny_pipe):
    before = _unet_state(tiny_pipe)
    r = erase_concepts(tiny_pipe, ["van gogh"], "salun", dict(FAST_SALUN, mask_fraction=0.3, scope="cross_attn"))
    assert r.mask is not None and abs(r.stats["mask_fraction_kept"] - 0.3) < 0.01
    after = _unet_state(tiny_pipe)
    moved_salient = 0
    for n, p in after.items():
        moved = p != before[n]
        if n not in r.mask:
            assert not moved.any(), f"{n} is outside the scope but moved"
            continue
        assert not (moved & ~r.mask[n]).any(), f"non-salient weights of {n} moved"
        moved_salient += int((moved & r.mask[n]).sum())
    assert moved_salient > 0


def test_reproducible_with_seed(tiny_folder):
    from erase.models import load_pipeline

    a = erase_concepts(load_pipeline(tiny_folder), "van gogh", "salun", FAST_SALUN)
    b = erase_concepts(load_pipeline(tiny_folder), "van gogh", "salun", FAST_SALUN)
    assert set(a.tensors) == set(b.tensors)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_not_inplace_and_applied_context(tiny_pipe):
    before = _unet_state(tiny_pipe)
    r = erase_concepts(tiny_pipe, ["van gogh", "circle"], "fmn", FAST_FMN, inplace=False)
    assert r.concepts == ["van gogh", "circle"]
    assert all(torch.equal(before[n], p) for n, p in _unet_state(tiny_pipe).items())
    with r.applied(tiny_pipe):
        inside = dict(tiny_pipe.unet.named_parameters())
        assert all(torch.equal(inside[k].detach(), v) for k, v in r.tensors.items())
    assert all(torch.equal(before[n], p) for n, p in _unet_state(tiny_pipe).items())


def test_cancel_restores_the_unet(tiny_pipe):
    before = _unet_state(tiny_pipe)

    def progress(done, total, info):
        if info.get("phase") == "fmn" and done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        erase_concepts(tiny_pipe, "van gogh", "fmn", FAST_FMN, progress=progress)
    assert all(torch.equal(before[n], p) for n, p in _unet_state(tiny_pipe).items())


@pytest.mark.parametrize(
    "method, config, message",
    [
        ("fmn", {"steps": -1}, "steps must be a positive integer"),
        ("fmn", {"steps": 0}, "steps must be a positive integer"),
        ("salun", {"mask_fraction": 0.0}, "mask_fraction must be in"),
        ("salun", {"mask_fraction": 1.5}, "mask_fraction must be in"),
        ("salun", {"epochs": "five"}, "epochs must be of type int"),
        ("fmn", {"lr": -1e-3}, "lr must be a positive"),
        ("fmn", {"scope": "everything"}, "scope must be one of"),
        ("fmn", {"stepz": 3}, "unknown setting"),
        ("fmn", {"seed": -1}, "seed must be an integer from 0 to"),  # numpy's limit, refused before any work
        ("fmn", {"lr": float("inf")}, "lr must be a positive"),
        ("rece-adv", {"attack_lr": float("inf")}, "attack_lr must be a positive"),
        ("rece-adv", {"retain_weight": float("nan")}, "retain_weight must be a number >= 0"),
        ("advunlearn", {"iterations": 4, "warmup": 10}, r"warmup \(10\) must be below iterations \(4\)"),
        ("nope", {}, "unknown method 'nope'"),
    ],
)
def test_bad_settings(tiny_pipe, method, config, message):
    with pytest.raises(EraseError, match=message):
        erase_concepts(tiny_pipe, "van gogh", method, config)


@pytest.mark.parametrize("concepts, message", [("", "non-empty"), ([], "no concept"), ("§§", "vocabulary")])
def test_bad_concepts_fail_before_work(tiny_pipe, concepts, message):
    calls = []
    with pytest.raises(EraseError, match=message):
        erase_concepts(tiny_pipe, concepts, "fmn", FAST_FMN, progress=lambda *a: calls.append(a))
    assert not calls


def test_yaml_configs_load_and_match_defaults():
    from pathlib import Path

    from erase import methods

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in methods.available():
        cfg = methods.load_config(name, root / f"{name}.yaml")
        assert cfg == methods.make_config(name), f"configs/{name}.yaml drifted from the {name} defaults"


def test_settings_valid_on_the_toy_presets_only_are_not_refused_before_the_model_is_known():
    """advunlearn: the paper warms up 200 steps, the toy preset 20; iterations 50 is fine on the toy world."""
    from erase import methods

    for toyworld in (True, False):
        methods.precheck_config("advunlearn", {"iterations": 50}, toyworld=toyworld)
    with pytest.raises(EraseError, match=r"warmup \(20\) must be below iterations \(10\)"):
        methods.precheck_config("advunlearn", {"iterations": 10}, toyworld=True)
    with pytest.raises(EraseError, match=r"warmup \(200\) must be below iterations \(10\)"):
        methods.precheck_config("advunlearn", {"iterations": 10}, toyworld=False)
    with pytest.raises(EraseError, match="unknown setting"):
        methods.precheck_config("advunlearn", {"iteration": 50})


def test_gradient_checkpointing_gives_the_same_result(tiny_folder):
    from erase.models import load_pipeline

    plain = erase_concepts(load_pipeline(tiny_folder), "van gogh", "salun", FAST_SALUN)
    ckpt = erase_concepts(load_pipeline(tiny_folder), "van gogh", "salun", dict(FAST_SALUN, gradient_checkpointing=True))
    assert plain.stats["loss_first"] == pytest.approx(ckpt.stats["loss_first"], rel=1e-5)
    assert all(torch.allclose(plain.tensors[k], ckpt.tensors[k], atol=1e-6) for k in plain.tensors)


def test_out_of_memory_is_a_clear_error_and_restores(tiny_pipe, monkeypatch):
    from erase.methods import fmn

    before = _unet_state(tiny_pipe)
    real = fmn.Trainer.run

    def oom(self, *a, **k):
        with torch.no_grad():
            next(iter(self.params.values())).add_(1.0)  # half-way through: weights already moved
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")

    monkeypatch.setattr(fmn.Trainer, "run", oom)
    with pytest.raises(EraseError, match="out of memory"):
        erase_concepts(tiny_pipe, "van gogh", "fmn", FAST_FMN)
    monkeypatch.setattr(fmn.Trainer, "run", real)
    assert all(torch.equal(before[n], p) for n, p in _unet_state(tiny_pipe).items())


def test_user_images_replace_generated_forget_data(tiny_pipe):
    from PIL import Image

    from erase.methods.job import ErasureJob
    from erase.prompts import prompt_source_for

    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "green")]
    job = ErasureJob(pipe=tiny_pipe, concepts=["van gogh"], prompts=prompt_source_for(tiny_pipe), images={"van gogh": images})
    forget = job.forget_set(99, steps=2, guidance_scale=1.0, seed=0)
    assert len(forget) == 3 and forget.latents.shape[1:] == (4, 8, 8)
    assert all("van gogh" in p for p in forget.prompts)
    assert not any("van gogh" in a for a in forget.anchor_prompts)  # c′ drops the concept
    r = erase_concepts(tiny_pipe, "van gogh", "fmn", FAST_FMN, images={"van gogh": images})
    assert r.stats["steps"] == FAST_FMN["steps"]
