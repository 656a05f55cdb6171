import hashlib

import pytest
from safetensors import safe_open

from conftest import FAST_FMN, images_equal
from erase.api import erase_concepts
from erase.errors import EraseError
from erase.evaluation import generate
from erase.export import apply_delta, export_delta, export_diffusers, export_single_file, load_delta
from erase.models import load_pipeline

PROMPTS = ["a painting by van gogh", "a photo of a cat"]
SEEDS = [0, 1]


def _digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def erased(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    result = erase_concepts(pipe, "van gogh", "fmn", dict(FAST_FMN, steps=6), inplace=False)
    expected = generate(pipe, PROMPTS, SEEDS, steps=4, result=result)
    base = generate(pipe, PROMPTS, SEEDS, steps=4)
    assert not images_equal(expected, base)  # the erasure changed the images
    return pipe, result, expected


def test_diffusers_folder_reloads_identically(erased, tmp_path, tiny_folder):
    from diffusers import StableDiffusionPipeline

    before = _digest(tiny_folder)
    pipe, result, expected = erased
    out = export_diffusers(pipe, result, tmp_path / "model")
    plain = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    assert images_equal(generate(plain, PROMPTS, SEEDS, steps=4), expected)
    assert _digest(tiny_folder) == before  # the base model's files are never touched
    with pytest.raises(EraseError, match="exists"):
        export_diffusers(pipe, result, out)


def test_delta_applies_to_a_fresh_base(erased, tmp_path, tiny_folder):
    pipe, result, expected = erased
    path = export_delta(result, tmp_path / "delta.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert len(list(f.keys())) == len(result.tensors)
        meta = f.metadata()
    assert meta["method"] == "fmn" and '"van gogh"' in meta["concepts"] and meta["base_model"] == str(tiny_folder)
    fresh = load_pipeline(tiny_folder)
    assert apply_delta(fresh, path)["format"] == "erase-delta"
    assert images_equal(generate(fresh, PROMPTS, SEEDS, steps=4), expected)
    tensors, _ = load_delta(path)
    assert set(tensors) == set(result.tensors)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_single_file_reloads_identically(erased, tmp_path, tiny_folder):
    pipe, result, expected = erased
    path = export_single_file(pipe, result, tmp_path / "erased.safetensors")
    again = load_pipeline(path, config=tiny_folder)
    assert images_equal(generate(again, PROMPTS, SEEDS, steps=4), expected)


def test_delta_for_another_model_is_refused(erased, tmp_path):
    from erase.synthetic import build_pipeline

    pipe, result, _ = erased
    path = export_delta(result, tmp_path / "d.safetensors")
    other = build_pipeline("tiny")
    other.unet.conv_in = type(other.unet.conv_in)(4, 16, 3, padding=1)  # a different layout
    import torch

    bad = {k: torch.zeros(3) for k in list(result.tensors)[:1]}
    from erase.api import ErasureResult

    with pytest.raises(EraseError, match="shape"):
        ErasureResult("fmn", ["x"], "", {}, bad, {}).apply(pipe)
    not_delta = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(not_delta))
    with pytest.raises(EraseError, match="not an erase delta"):
        apply_delta(pipe, not_delta)


def test_single_file_with_an_openclip_text_encoder_round_trips(tiny_folder, tmp_path):
    """SD 2.x single files keep the text encoder in OpenCLIP's layout; from_single_file converts it back."""
    import types

    import torch

    from erase.single_file import choose_text_encoder_layout

    pipe = load_pipeline(tiny_folder)
    fast = dict(iterations=2, warmup=1, attack_steps=1, ddim_steps=2, batch_size=1, retain_batch=2, retain_items=2, lr=1e-2)
    result = erase_concepts(pipe, "van gogh", "advunlearn", fast, inplace=False)  # the text encoder changes
    expected = generate(pipe, PROMPTS, SEEDS, steps=4, result=result)
    assert not images_equal(expected, generate(pipe, PROMPTS, SEEDS, steps=4))
    path = export_single_file(pipe, result, tmp_path / "sd2.safetensors", text_encoder_layout="openclip")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        qkv = f.get_tensor("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight")
        fc1 = f.get_tensor("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight")
    assert "cond_stage_model.model.token_embedding.weight" in keys and "cond_stage_model.model.ln_final.weight" in keys
    assert not [k for k in keys if k.startswith("cond_stage_model.transformer.")]
    q = result.tensors["text_encoder.encoder.layers.1.self_attn.q_proj.weight"]
    assert qkv.shape == (3 * q.shape[0], q.shape[1]) and torch.equal(qkv[: q.shape[0]], q)
    assert torch.equal(fc1, result.tensors["text_encoder.encoder.layers.0.mlp.fc1.weight"])
    again = load_pipeline(path, config=tiny_folder)
    assert images_equal(generate(again, PROMPTS, SEEDS, steps=4), expected)
    # 'auto' picks OpenCLIP for the SD 2.x family (1024-d cross-attention), CLIP otherwise
    sd2 = types.SimpleNamespace(unet=types.SimpleNamespace(config=types.SimpleNamespace(cross_attention_dim=1024)))
    assert choose_text_encoder_layout(sd2) == "openclip" and choose_text_encoder_layout(pipe) == "clip"
    with pytest.raises(EraseError, match="text_encoder_layout must be"):
        export_single_file(pipe, result, tmp_path / "x.safetensors", text_encoder_layout="open_clip")
    assert not (tmp_path / "x.safetensors").exists()
