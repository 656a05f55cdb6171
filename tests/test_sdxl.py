"""SDXL in the engine, on a tiny random StableDiffusionXLPipeline built from config: the UNet is
conditioned exactly as the SDXL pipeline conditions it (two text encoders, pooled embedding, time
ids), every method runs and changes what it should, learned tokens go through both encoders, the
attacks run, and what is not supported is refused in one line. (Exports: test_sdxl_exports.py.)"""

import json

import pytest
import torch

from conftest import FAST_FMN, FAST_SALUN, images_equal
from erase.api import erase_concepts, split_name
from erase.conditioning import is_sdxl, token_states, unconditional, unet_inputs
from erase.data import encode_prompts
from erase.errors import EraseError

PROMPTS = ["a painting by van gogh", "a photo of a cat on a table"]
FAST_ESD = dict(iterations=4, lr=1e-3, ddim_steps=3, batch_size=2)
FAST_ADV = dict(iterations=4, warmup=1, attack_every=1, attack_steps=2, attack_lr=1e-2, lr=1e-3, ddim_steps=2,
                batch_size=2, retain_batch=2, retain_items=4)


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from erase.synthetic import build_pipeline

    folder = tmp_path_factory.mktemp("sdxl") / "pipe"
    build_pipeline("tiny-sdxl", seed=0).save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture()
def sdxl(sdxl_folder):
    from erase.models import load_pipeline

    return load_pipeline(sdxl_folder)


def _state(pipe):
    return {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder", "text_encoder_2")
            for n, p in getattr(pipe, c).named_parameters()}


def _images(pipe, prompts=PROMPTS):
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=3, generator=gens, output_type="np").images


def test_loads_as_sdxl(sdxl):
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline" and is_sdxl(sdxl)
    assert sdxl.erase_info.family == "sdxl" and sdxl.erase_info.kind == "folder"


@torch.no_grad()
def test_conditioning_is_the_pipelines_own(sdxl):
    """One packed tensor per prompt gives exactly the UNet output the SDXL pipeline's own
    encode_prompt + added time ids give; the unconditional one is its zeroed negative."""
    emb, ids = encode_prompts(sdxl, PROMPTS)
    assert emb.shape == (2, 17, 80) and ids.shape == (2, 16)  # 16 tokens + the packed row; 32 + 48 wide
    pos, neg, pooled, neg_pooled = sdxl.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    assert torch.equal(token_states(sdxl, emb), pos)
    time_ids = sdxl._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=torch.float32, text_encoder_projection_dim=48)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 700])
    ours = sdxl.unet(x, t, **unet_inputs(sdxl.unet, emb)).sample
    theirs = sdxl.unet(x, t, encoder_hidden_states=pos, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(2, 1)}).sample
    assert torch.equal(ours, theirs)
    u = unconditional(sdxl, 2)
    assert torch.equal(token_states(sdxl, u), neg) and not neg.any()
    ours = sdxl.unet(x, t, **unet_inputs(sdxl.unet, u)).sample
    theirs = sdxl.unet(x, t, encoder_hidden_states=neg, added_cond_kwargs={"text_embeds": neg_pooled, "time_ids": time_ids.repeat(2, 1)}).sample
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_learned_tokens_go_through_both_encoders(sdxl):
    """Vectors are as wide as both encoders' token embeddings; writing the concept's own
    embeddings into its slots reproduces the plain prompt's conditioning exactly."""
    from erase.concepts import concept_token_ids
    from erase.inversion import embedding_table, encode_with_vectors, slotted

    table = embedding_table(sdxl)
    assert table.shape[1] == 32 + 48
    span = len(concept_token_ids(sdxl.tokenizer, "van gogh"))
    ids, slots = slotted(sdxl, PROMPTS[:1], "van gogh", span)
    assert ids.shape == (1, 2, 16) and not torch.equal(ids[0, 0], ids[0, 1])  # the two tokenizers pad differently
    own = table[concept_token_ids(sdxl.tokenizer, "van gogh")]
    assert torch.equal(encode_with_vectors(sdxl, ids, slots, own), encode_prompts(sdxl, PROMPTS[:1])[0])
    assert not torch.equal(encode_with_vectors(sdxl, ids, slots, own.flip(0)), encode_prompts(sdxl, PROMPTS[:1])[0])


@pytest.mark.parametrize("method, config, components", [
    ("fmn", FAST_FMN, {"unet"}),
    ("fmn", dict(FAST_FMN, use_ti=True, ti_steps=3, ti_tokens=2), {"unet"}),
    ("salun", dict(FAST_SALUN, mask_loss="cfg"), {"unet"}),
    ("esd", FAST_ESD, {"unet"}),
    ("uce", {"preserve": ["dog"]}, {"unet"}),
    ("rece", {"preserve": ["dog"], "adversary": "inversion", "inversion_steps": 3}, {"unet"}),
    ("rece-adv", {"preserve": ["dog"], "iterations": 2, "ddim_steps": 2, "attack_steps": 2, "retain_batch": 2, "retain_items": 2}, {"unet"}),
    ("advunlearn", FAST_ADV, {"text_encoder", "text_encoder_2"}),
    ("advunlearn", dict(FAST_ADV, scope="cross_attn"), {"unet"}),
])
def test_every_method_erases_on_sdxl(sdxl, method, config, components):
    before, base_images = _state(sdxl), _images(sdxl)
    result = erase_concepts(sdxl, "van gogh", method, config)
    after = _state(sdxl)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert set(result.components()) == components
    assert changed == {".".join(split_name(k)) for k in result.tensors}
    erased = _images(sdxl)
    assert not images_equal(erased[:1], base_images[:1])  # the concept's prompt renders differently
    result.restore(sdxl)
    assert images_equal(_images(sdxl), base_images)
    if method == "fmn" and not config.get("use_ti"):
        assert result.stats["attention_mass_after"] < result.stats["attention_mass_before"]
    if method == "uce":  # 16 token states per preserve prompt (the packed row is not one), plus prefixes
        assert result.stats["preserve_vectors"] >= 16 * result.stats["preserve_prompts"]
        from erase.methods.uce import UCEConfig, edit_problem
        from erase.methods.job import ErasureJob
        from erase.prompts import prompt_source_for

        job = ErasureJob(pipe=sdxl, concepts=["van gogh"], prompts=prompt_source_for(sdxl))
        c_p = edit_problem(job, UCEConfig(preserve=["dog"])).c_p
        assert c_p.shape[1] == 80 and not (c_p[:, 48:54] == torch.tensor([16.0, 16, 0, 0, 16, 16], dtype=c_p.dtype)).all(1).any()
    if method == "advunlearn" and "text_encoder_2" in components:  # the pooled projection trains too
        assert "text_encoder_2.text_projection.weight" in result.tensors


@pytest.mark.parametrize("attack, config", [
    ("ti", dict(steps=3, n_images=2, generation_steps=2, batch_size=2)),
    ("prompt", dict(steps=3, k=2, n_images=2, generation_steps=2, batch_size=2, eval_every=2, eval_items=2)),
    ("relapse", dict(steps=3, n_images=2, generation_steps=2, batch_size=2, lr=1e-3)),
])
def test_attacks_run_on_sdxl_and_leave_the_pipe(sdxl, attack, config):
    from erase.attacks import run_attack

    erasure = erase_concepts(sdxl, "van gogh", "advunlearn", FAST_ADV, inplace=False)
    before = _state(sdxl)
    res = run_attack(sdxl, "van gogh", attack, config, erasure=erasure, seeds=[0], sampling={"steps": 2})
    assert res.images and all(torch.equal(before[k], v) for k, v in _state(sdxl).items())
    if attack == "ti":
        assert res.learned["vectors"].shape[-1] == 80
    if attack == "relapse":
        assert res.stats["fine_tuned"] == ["text_encoder", "unet"]


def test_single_file_checks(tmp_path, sdxl_folder):
    """An SDXL single file needs its config offline; SD 3 / FLUX files are refused; the config
    folder must be of the same kind."""
    from safetensors.torch import save_file

    from erase.models import load_pipeline

    sdxl_file, sd3, flux = tmp_path / "xl.safetensors", tmp_path / "sd3.safetensors", tmp_path / "flux.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.1.model.positional_embedding": torch.zeros(1)}, str(sdxl_file))
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1)}, str(sd3))
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, str(flux))
    with pytest.raises(EraseError, match="SDXL single file: offline, pass config=") as e:
        load_pipeline(sdxl_file)
    assert "\n" not in str(e.value)
    for path in (sd3, flux):
        with pytest.raises(EraseError, match="SD 3 / FLUX checkpoint.*supports Stable Diffusion 1.x/2.x"):
            load_pipeline(path)
    sd1 = tmp_path / "sd1"
    from erase.synthetic import save_pipeline_folder

    save_pipeline_folder("tiny", sd1)
    with pytest.raises(EraseError, match="is a StableDiffusionXLPipeline checkpoint but its config"):
        load_pipeline(sdxl_file, config=sd1)
    index = json.loads((sdxl_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"


def test_app_loads_erases_compares_and_draws_on_sdxl(sdxl_folder, tmp_path):
    """The app's callbacks (what its buttons run) on an SDXL folder: load, erase, compare, heat maps."""
    from erase import methods
    from ui.diffusion import DiffusionCallbacks
    from ui.settings import all_settings
    from ui.state import ModelCache, Session

    cb = DiffusionCallbacks(ModelCache(), all_settings(methods.available()), work_root=tmp_path, judge_steps=2)
    session = Session()
    loaded = cb.load_model(str(sdxl_folder), session)
    assert "sdxl" in loaded[0]
    status, stats = cb.erase(session, ["van gogh"], "uce", *loaded[4:])
    assert "Erased" in status and stats["changed_tensors"] > 0
    compared = cb.compare(session, 2, "0", 2, 5.0)
    assert compared
    maps = cb.heatmaps(session, "0", 2)
    assert len(maps) == 4 and maps[0][0].size == (16, 16)
    session.close()


def test_half_precision_frozen_parts_on_sdxl(sdxl_folder):
    """The GPU's dtype path (bf16 frozen parts, fp32 UNet) on SDXL: both encoders are cast, the
    text-encoder scope trains both in fp32 and puts them back in bf16."""
    import warnings

    from erase.models import load_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline(sdxl_folder, mixed_precision="bf16")
        assert (pipe.text_encoder.dtype, pipe.text_encoder_2.dtype, pipe.unet.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
        result = erase_concepts(pipe, "van gogh", "advunlearn", FAST_ADV, inplace=False)
    assert (pipe.text_encoder.dtype, pipe.text_encoder_2.dtype) == (torch.bfloat16, torch.bfloat16)
    assert set(result.components()) == {"text_encoder", "text_encoder_2"}
    assert all(v.dtype == torch.float32 for v in result.tensors.values())
