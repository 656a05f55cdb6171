"""SDXL exports and loading them back: the diffusers folder and its card, the delta, the LoRA in both
layouts, the single file in SDXL's original (SGM) layout, and files made for another model family.

One erasure touches all three trainable parts: FMN on the UNet's cross-attention keys/values and
AdvUnlearn on both text encoders, made separately from the same base and taken together.

Tolerances (measured on the tiny SDXL pipeline, 2 steps, seeds 0 and 1, kohya layout): the erasure
moves the images by 22.8 levels on average. A full-rank LoRA (either layout, through plain diffusers)
gives the images of the erasure restricted to the Linear/Conv weights a LoRA carries (max
difference 0 with one thread; with two, float rounding moves a pixel level here and there: mean 0.0007), and for a UNet-only erasure exactly the delta's images (0); against the whole delta
it is off by what it cannot carry (AdvUnlearn's biases, layer norms and text_projection): mean
1.16, max 6 of 255. At rank 4 (largest relative weight error 0.59) it is off from the restricted
erasure by 0.31 on average (max 2); rank 8 (0.41): 0.09 (1); rank 2 (0.75): 0.87 (6).
"""

import dataclasses
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import FAST_FMN, images_equal
from erase.api import ErasureResult, erase_concepts
from erase.errors import EraseError
from erase.evaluation import generate
from erase.export import apply_delta, export_delta, export_diffusers, export_single_file, load_delta
from erase.lora import export_lora, factorise, lora_able
from erase.models import load_pipeline
from erase.reload import load_erasure

PROMPTS = ["a painting by van gogh", "a photo of a cat"]
SEEDS = [0, 1]
STEPS = 2
KV_FMN = dict(FAST_FMN, lr=1e-2, scope="cross_attn_kv")
ADV = dict(iterations=4, warmup=1, attack_every=1, attack_steps=2, attack_lr=1e-2, lr=1e-3, ddim_steps=2, batch_size=2,
           retain_batch=2, retain_items=4)
HUB_BASE = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(autouse=True)
def _quiet():
    """diffusers warns about every LoRA part a file does not have (the UNet-only kohya file has no text encoders)."""
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the LoRA's left-out tensors (asserted from the metadata)
        yield


def _array(images):
    return np.stack([np.asarray(x, dtype=np.float32) for x in images])


def _erase_everything(pipe) -> ErasureResult:
    """The UNet (FMN, cross-attention k/v) and both text encoders (AdvUnlearn), from the same base."""
    unet = erase_concepts(pipe, "van gogh", "fmn", KV_FMN, inplace=False)
    text = erase_concepts(pipe, "van gogh", "advunlearn", ADV, inplace=False)
    assert unet.components() == ["unet"] and text.components() == ["text_encoder", "text_encoder_2"]
    return ErasureResult("advunlearn", ["van gogh"], text.base_model, text.config, {**unet.tensors, **text.tensors},
                         {**unet.original, **text.original})


def _state(pipe) -> dict:
    return {f"{c}.{k}": v.detach().clone() for c in ("unet", "text_encoder", "text_encoder_2")
            if getattr(pipe, c, None) is not None for k, v in getattr(pipe, c).state_dict().items()}


def _unchanged(pipe, before) -> bool:
    after = _state(pipe)
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _plain(folder):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from erase.synthetic import save_pipeline_folder

    return save_pipeline_folder("tiny-sdxl", tmp_path_factory.mktemp("sdxl") / "pipe", seed=0)


@pytest.fixture(scope="module")
def erased(sdxl_folder):
    pipe = load_pipeline(sdxl_folder)
    assert pipe.erase_info.family == "sdxl"
    result = _erase_everything(pipe)
    base = generate(pipe, PROMPTS, SEEDS, steps=STEPS)
    expected = generate(pipe, PROMPTS, SEEDS, steps=STEPS, result=result)
    assert float(np.abs(_array(expected) - _array(base)).mean()) > 3  # the erasure visibly changes the images
    return pipe, result, base, expected


@pytest.fixture(scope="module")
def files(erased, tmp_path_factory):
    pipe, result, _, _ = erased
    folder = tmp_path_factory.mktemp("sdxl-files")
    factors = factorise(result, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the left-out tensors (asserted from the metadata below)
        out = {layout: export_lora(result, folder / f"{layout}.safetensors", "full", layout, base=pipe, factors=factors)
               for layout in ("kohya", "diffusers")}
    out["delta"] = export_delta(result, folder / "delta.safetensors", base=pipe)
    return out


def test_the_diffusers_folder_loads_back_and_both_folders_get_sdxl_cards(erased, tmp_path):
    from huggingface_hub import ModelCard

    from erase.lora import LORA_WEIGHT_NAME, export_lora_folder

    pipe, result, _, expected = erased
    hub = dataclasses.replace(result, base_model=HUB_BASE)  # as if erased from the Hub's SDXL
    folder = export_diffusers(pipe, hub, tmp_path / "model")
    again = load_pipeline(folder)
    assert type(again).__name__ == "StableDiffusionXLPipeline" and again.erase_info.family == "sdxl"
    assert images_equal(generate(again, PROMPTS, SEEDS, steps=STEPS), expected)
    assert images_equal(generate(_plain(folder), PROMPTS, SEEDS, steps=STEPS), expected)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == HUB_BASE and data["base_model_relation"] == "finetune" and data["library_name"] == "diffusers"
    assert {"concept-erasure", "advunlearn", "stable-diffusion-xl"} <= set(data["tags"]) and "stable-diffusion" not in data["tags"]
    assert "StableDiffusionXLPipeline.from_pretrained" in card.text
    info = export_lora_folder(hub, tmp_path / "lora", 4, base=pipe)
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == HUB_BASE and data["base_model_relation"] == "adapter"
    assert {"concept-erasure", "lora", "stable-diffusion-xl"} <= set(data["tags"]) and "StableDiffusionXLPipeline" in card.text
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == sorted(["README.md", LORA_WEIGHT_NAME, info["files"]["kohya"]])


def test_the_delta_carries_both_text_encoders_and_its_base_fingerprint(erased, files, sdxl_folder, tmp_path):
    from erase.synthetic import save_pipeline_folder

    _, result, _, expected = erased
    with safe_open(str(files["delta"]), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == len(result.tensors) and {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert "text_encoder_2.text_model.encoder.layers.1.self_attn.q_proj.weight" in keys
    assert "text_encoder_2.text_projection.weight" in keys  # a top-level tensor of the projection model
    assert set(load_delta(files["delta"])[0]) == set(result.tensors)
    fresh = load_pipeline(sdxl_folder)
    assert apply_delta(fresh, files["delta"])["format"] == "erase-delta"
    assert images_equal(generate(fresh, PROMPTS, SEEDS, steps=STEPS), expected)
    # another SDXL base of the same shapes (other seed): the fingerprint refuses it, names and shapes would not
    other = load_pipeline(save_pipeline_folder("tiny-sdxl", tmp_path / "other", seed=1))
    before = _state(other)
    with pytest.raises(EraseError, match="made for another base model") as e:
        apply_delta(other, files["delta"])
    assert "\n" not in str(e.value) and _unchanged(other, before)


@pytest.mark.parametrize("rank", ["full", 4])
def test_both_lora_layouts_load_in_plain_sdxl_diffusers(erased, sdxl_folder, tmp_path, rank):
    pipe, result, base, expected = erased
    factors = factorise(result, rank)
    carried = ErasureResult(result.method, result.concepts, "", {}, {k: v for k, v in result.tensors.items() if lora_able(k, v)}, {})
    weights_only = generate(pipe, PROMPTS, SEEDS, steps=STEPS, result=carried)
    effect = float(np.abs(_array(weights_only) - _array(base)).mean())
    left_out = sorted(set(result.tensors) - set(carried.tensors))
    assert "text_encoder_2.text_projection.weight" in left_out  # SDXL's pooled projection: no LoRA slot in A1111
    assert all(k.endswith(".bias") or "layer_norm" in k or k == "text_encoder_2.text_projection.weight" for k in left_out)
    for layout, parts in (("kohya", {"lora_unet", "lora_te1", "lora_te2"}), ("diffusers", {"unet", "text_encoder", "text_encoder_2"})):
        path = export_lora(result, tmp_path / f"{layout}.safetensors", rank, layout, base=pipe, factors=factors)
        with safe_open(str(path), framework="pt") as f:
            keys, meta = list(f.keys()), f.metadata()
        split = (lambda k: "_".join(k.split("_")[:2])) if layout == "kohya" else (lambda k: k.split(".")[0])
        assert {split(k) for k in keys} == parts
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert meta["lora_layout"] == layout and sorted(json.loads(meta["lora_left_out"])) == left_out
        assert json.loads(meta["base_fingerprint"])["unet"]["sha256"]
        plain = _plain(sdxl_folder)
        plain.load_lora_weights(str(path))  # diffusers detects and converts the kohya layout itself
        got = _array(generate(plain, PROMPTS, SEEDS, steps=STEPS))
        err = float(np.abs(got - _array(weights_only)).mean())
        if rank == "full":
            # the carried part of the erasure, up to float rounding (W + up·down computed apart from the
            # merged W): 0 with one thread, a pixel level here and there with two (mean 0.0007)
            assert err < 0.01 and np.abs(got - _array(weights_only)).max() <= 1, (layout, err)
            off = np.abs(got - _array(expected))
            assert off.mean() < 0.1 * effect and off.max() <= 16  # the delta's images, but for the left-out tensors
        else:
            rel = max(factors.errors.values())
            assert 0 < rel < 0.8 and 0 < err <= rel * effect and err < 0.05 * effect, (layout, err, rel, effect)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_unet_only_lora_equals_the_delta(erased, sdxl_folder, tmp_path):
    pipe, result, _, _ = erased
    unet = ErasureResult("fmn", ["van gogh"], "", {}, {k: v for k, v in result.tensors.items() if not k.startswith("text_encoder")},
                         {k: v for k, v in result.original.items() if not k.startswith("text_encoder")})
    delta = export_delta(unet, tmp_path / "delta.safetensors", base=pipe)
    fresh = load_pipeline(sdxl_folder)
    apply_delta(fresh, delta)
    expected = generate(fresh, PROMPTS, SEEDS, steps=STEPS)
    for layout in ("kohya", "diffusers"):
        plain = _plain(sdxl_folder)
        plain.load_lora_weights(str(export_lora(unet, tmp_path / f"{layout}.safetensors", "full", layout, base=pipe)))
        off = np.abs(_array(generate(plain, PROMPTS, SEEDS, steps=STEPS)) - _array(expected))
        assert off.mean() < 0.01 and off.max() <= 1, layout  # the delta's images, up to float rounding (see above)


def test_delta_and_loras_load_back_onto_the_current_model(erased, files, sdxl_folder):
    """erase.reload (the app's and the CLI's --apply) on SDXL: the erasure each file carries, the model untouched."""
    _, result, _, expected = erased
    merged = factorise(result, "full").merged(result.original)
    fresh = load_pipeline(sdxl_folder)
    before = _state(fresh)
    delta = load_erasure(fresh, files["delta"])
    assert delta.stats["file_kind"] == "delta" and set(delta.tensors) == set(result.tensors)
    assert images_equal(generate(fresh, PROMPTS, SEEDS, steps=STEPS, result=delta), expected)
    plain = _plain(sdxl_folder)
    plain.load_lora_weights(str(files["kohya"]))
    theirs = _array(generate(plain, PROMPTS, SEEDS, steps=STEPS))
    for layout in ("kohya", "diffusers"):
        loaded = load_erasure(fresh, files[layout])
        assert loaded.stats["file_kind"] == "lora" and loaded.stats["lora_layout"] == layout and loaded.method == "advunlearn"
        assert set(loaded.tensors) == set(merged) and {k.split(".")[0] for k in loaded.tensors} >= {"text_encoder", "text_encoder_2"}
        for k in merged:
            assert torch.allclose(loaded.tensors[k], merged[k], atol=1e-6), k
        ours = _array(generate(fresh, PROMPTS, SEEDS, steps=STEPS, result=loaded))
        assert np.abs(ours - theirs).max() <= 1  # merged weights vs PEFT's separate branch: float rounding only
    assert _unchanged(fresh, before)


def test_the_single_file_is_sdxl_original_layout_and_loads_back(erased, sdxl_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    pipe, result, _, expected = erased
    folder = sdxl_folder
    path = export_single_file(pipe, result, tmp_path / "sdxl.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        get = f.get_tensor
        prefix = "conditioner.embedders.1.model."
        assert torch.equal(get("model.diffusion_model.label_emb.0.0.weight"), pipe.unet.add_embedding.linear_1.weight)
        assert torch.equal(get("model.diffusion_model.label_emb.0.2.bias"), pipe.unet.add_embedding.linear_2.bias)
        q = result.tensors["text_encoder_2.text_model.encoder.layers.1.self_attn.q_proj.weight"]
        assert torch.equal(get(prefix + "transformer.resblocks.1.attn.in_proj_weight")[: q.shape[0]], q)
        projection = result.tensors["text_encoder_2.text_projection.weight"]  # (projection, width) in diffusers
        assert torch.equal(get(prefix + "text_projection"), projection.T)  # OpenCLIP keeps x @ P: (width, projection)
        k = result.tensors["text_encoder.encoder.layers.0.self_attn.k_proj.weight"]
        assert torch.equal(get("conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"), k)
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "conditioner"}
    assert prefix + "transformer.resblocks.1.mlp.c_proj.bias" in keys  # every layer: the last one pools
    assert prefix + "ln_final.weight" in keys and not [k for k in keys if k.startswith("cond_stage_model.")]
    with result.applied(pipe):
        erased_state = _state(pipe)
    for again in (load_pipeline(path, config=folder),
                  StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)):
        again.set_progress_bar_config(disable=True)
        assert type(again).__name__ == "StableDiffusionXLPipeline"
        assert _unchanged(again, erased_state)  # every tensor of the UNet and both text encoders comes back exactly
        assert images_equal(generate(again, PROMPTS, SEEDS, steps=STEPS), expected)
    with pytest.raises(EraseError, match="fixed layouts") as e:
        export_single_file(pipe, result, tmp_path / "x.safetensors", text_encoder_layout="openclip")
    assert "\n" not in str(e.value) and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("rank, message", [(0, "at least 1"), (-1, "at least 1"), (65, "above the size of every changed weight")])
def test_a_bad_rank_is_one_line_and_writes_nothing(erased, tmp_path, rank, message):
    pipe, result, _, _ = erased
    for layout in ("kohya", "diffusers"):
        with pytest.raises(EraseError, match=message) as e:
            export_lora(result, tmp_path / "x.safetensors", rank, layout, base=pipe)
        assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_files_of_the_other_family_are_refused(erased, files, sdxl_folder, tiny_folder, tmp_path):
    """SD 1.x files onto SDXL and SDXL files onto SD 1.x: one line, nothing written, no LoRA layers left behind."""
    sd1 = load_pipeline(tiny_folder)
    result = erase_concepts(sd1, "van gogh", "fmn", KV_FMN, inplace=False)
    sd1_files = {"delta": export_delta(result, tmp_path / "delta.safetensors", base=sd1)}
    for layout in ("kohya", "diffusers"):
        sd1_files[layout] = export_lora(result, tmp_path / f"{layout}.safetensors", "full", layout, base=sd1)
    sdxl = load_pipeline(sdxl_folder)
    for target, made_for_other in ((sdxl, sd1_files), (sd1, files)):
        before = _state(target)
        for kind, path in made_for_other.items():
            for check_base in (True, False):  # the fingerprint says so; without it, names and shapes do
                with pytest.raises(EraseError, match="another (base )?model|does not fit") as e:
                    (apply_delta if kind == "delta" else load_erasure)(target, path, check_base=check_base)
                assert "\n" not in str(e.value), (kind, str(e.value))
        assert _unchanged(target, before)
        assert not any("lora" in type(m).__module__ for m in target.unet.modules())
