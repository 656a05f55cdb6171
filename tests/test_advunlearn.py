"""AdvUnlearn: adversarial erasure on the text encoder or the UNet, and exports that carry
text-encoder tensors (deltas name each tensor's component; old UNet-only deltas still load)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import images_equal
from erase.api import erase_concepts
from erase.errors import EraseError
from erase.evaluation import generate
from erase.export import apply_delta, export_delta, export_diffusers, export_single_file, load_delta
from erase.models import load_pipeline

FAST = dict(iterations=4, warmup=1, attack_every=1, attack_steps=2, attack_lr=1e-2, lr=1e-3, ddim_steps=2,
            batch_size=2, retain_batch=2, retain_items=4)
PROMPTS = ["a painting by van gogh", "a photo of a cat"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def te_erasure(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    unet_before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    result = erase_concepts(pipe, "van gogh", "advunlearn", FAST, inplace=False)
    assert all(torch.equal(p, unet_before[n]) for n, p in pipe.unet.named_parameters())
    return pipe, result


def test_text_encoder_scope_changes_only_the_text_encoder(te_erasure):
    pipe, result = te_erasure
    assert result.tensors and result.components() == ["text_encoder"]
    assert all(k.startswith("text_encoder.") and ".embeddings." not in k for k in result.tensors)
    assert result.stats["attacks"] == FAST["iterations"] - FAST["warmup"]
    # inplace=False put the base weights back
    params = dict(pipe.text_encoder.named_parameters())
    assert all(torch.equal(params[k.removeprefix("text_encoder.")], v) for k, v in result.original.items())
    assert any(not torch.equal(result.tensors[k], result.original[k]) for k in result.tensors)


def test_unet_scope_changes_only_cross_attention(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    te_before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    result = erase_concepts(pipe, "van gogh", "advunlearn", dict(FAST, scope="cross_attn", iterations=2), inplace=True)
    assert result.components() == ["unet"] and all(".attn2." in k for k in result.tensors)
    assert all(torch.equal(p, te_before[n]) for n, p in pipe.text_encoder.named_parameters())


def test_without_a_retain_term(tiny_pipe):
    # retain_weight 0 leaves no retain prompts at all: the run must not need them
    result = erase_concepts(tiny_pipe, "van gogh", "advunlearn", dict(FAST, retain_weight=0.0, iterations=2), inplace=False)
    assert result.stats["retain_prompts"] == 0 and result.tensors


def test_same_seed_same_weights(tiny_folder, te_erasure):
    _, a = te_erasure
    b = erase_concepts(load_pipeline(tiny_folder), "van gogh", "advunlearn", FAST, inplace=False)
    assert set(a.tensors) == set(b.tensors) and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_bad_settings_are_one_line_errors(tiny_pipe):
    for bad, match in [({"scope": "everything"}, "scope"), ({"attack_steps": 0}, "attack_steps"),
                       ({"warmup": -1}, "warmup"), ({"attack_init": "zero"}, "attack_init"), ({"retain_weight": -1}, "retain_weight")]:
        with pytest.raises(EraseError, match=match):
            erase_concepts(tiny_pipe, "van gogh", "advunlearn", dict(FAST, **bad))
    with pytest.raises(EraseError, match="scope"):  # the text encoder is AdvUnlearn's, not every method's
        erase_concepts(tiny_pipe, "van gogh", "esd", {"train_method": "xattn", "scope": "text_encoder"})


def test_delta_names_components_and_reloads(te_erasure, tmp_path, tiny_folder):
    pipe, result = te_erasure
    expected = generate(pipe, PROMPTS, SEEDS, steps=3, result=result)
    assert not images_equal(expected, generate(pipe, PROMPTS, SEEDS, steps=3))
    path = export_delta(result, tmp_path / "d.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert all(k.startswith("text_encoder.") for k in f.keys())
    tensors, meta = load_delta(path)
    assert set(tensors) == set(result.tensors) and meta["method"] == "advunlearn"
    fresh = load_pipeline(tiny_folder)
    apply_delta(fresh, path)
    assert images_equal(generate(fresh, PROMPTS, SEEDS, steps=3), expected)


def test_diffusers_and_single_file_exports_carry_the_text_encoder(te_erasure, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe, result = te_erasure
    expected = generate(pipe, PROMPTS, SEEDS, steps=3, result=result)
    folder = export_diffusers(pipe, result, tmp_path / "model")
    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    assert images_equal(generate(plain, PROMPTS, SEEDS, steps=3), expected)
    single = export_single_file(pipe, result, tmp_path / "model.safetensors")
    with safe_open(str(single), framework="pt") as f:
        key = next(k for k in f.keys() if k.startswith("cond_stage_model.") and "layers.0.mlp.fc1.weight" in k)
        name = "text_encoder." + key.split("transformer.text_model.", 1)[1]
        assert torch.equal(f.get_tensor(key), result.tensors[name])


def test_old_unet_only_deltas_and_bare_state_dicts_still_load(tiny_folder, tmp_path):
    pipe = load_pipeline(tiny_folder)
    name, param = next((n, p) for n, p in pipe.unet.named_parameters() if ".attn2.to_k." in n)
    value = torch.randn_like(param)
    old = tmp_path / "old.safetensors"  # the layout every delta had before text-encoder tensors
    save_file({f"unet.{name}": value}, str(old), metadata={"format": "erase-delta", "method": "fmn"})
    tensors, _ = load_delta(old)
    assert list(tensors) == [name]
    apply_delta(pipe, old)
    assert torch.equal(dict(pipe.unet.named_parameters())[name], value)


def test_a_delta_for_another_model_is_refused_before_anything_changes(tiny_folder, tmp_path):
    pipe = load_pipeline(tiny_folder)
    name, param = next((n, p) for n, p in pipe.unet.named_parameters() if ".attn2.to_k." in n)
    before = param.detach().clone()
    bad = tmp_path / "bad.safetensors"
    save_file({f"unet.{name}": torch.ones_like(param), "text_encoder.encoder.layers.99.mlp.fc1.weight": torch.zeros(2, 2)},
              str(bad), metadata={"format": "erase-delta"})
    with pytest.raises(EraseError, match="text_encoder has no tensor"):
        apply_delta(pipe, bad)
    assert torch.equal(param.detach(), before)  # nothing half-applied


def test_relapse_fine_tunes_the_text_encoder_when_the_erasure_lives_there(te_erasure):
    from erase.attacks import run_attack

    pipe, result = te_erasure
    te_before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    unet_before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    res = run_attack(pipe, "van gogh", "relapse", dict(steps=2, n_images=2, generation_steps=2, batch_size=2, lr=1e-3),
                     erasure=result, sampling={"steps": 2})
    assert res.stats["fine_tuned"] == ["text_encoder", "unet"]
    # the attack left the model exactly as it was
    assert all(torch.equal(p, te_before[n]) for n, p in pipe.text_encoder.named_parameters())
    assert all(torch.equal(p, unet_before[n]) for n, p in pipe.unet.named_parameters())
