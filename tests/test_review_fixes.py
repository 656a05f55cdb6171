"""Fixes from the FMN / SalUn review: whole-word concept matching, SalUn's c′ choices, fp16
saliency, FMN's pooler / style templates / textual inversion, aspect-keeping image crops."""

import numpy as np
import pytest
import torch

from conftest import FAST_FMN, bundled_available
from erase.api import erase_concepts
from erase.concepts import anchor_prompt
from erase.errors import EraseError
from erase.methods import make_config
from erase.methods.salun import IMAGENETTE_CLASSES, misaligned_prompts
from erase.prompts import PromptSource

needs_bundled = pytest.mark.skipif(not bundled_available(), reason="bundled toy-world weights missing")


# --- whole-word matching ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "prompt, concept, anchor, expected",
    [
        # every whole-word occurrence is the concept (as concept_positions watches them all)
        ("an image of image", "image", None, "an of"),
        ("an image of imagery", "imagery", "", "an image of"),
        ("a painting of paint", "paint", None, "a painting of"),
        ("a painting of paint", "paint", "clay", "a painting of clay"),
        ("Cat and cat, a cat-like cat", "cat", "dog", "dog and dog, a dog-like dog"),  # all occurrences
        ("a painting by Van  Gogh", "van gogh", "Monet", "a painting by Monet"),
    ],
)
def test_anchor_prompt_replaces_whole_words(prompt, concept, anchor, expected):
    assert anchor_prompt(prompt, concept, anchor) == expected


def test_anchor_prompt_needs_the_concept_as_a_word():
    with pytest.raises(EraseError, match="not found as whole words"):
        anchor_prompt("a painting of a house", "paint")


def test_retain_filter_matches_whole_words():
    src = PromptSource(retain=("a painting of a house", "a paint can", "an image of imagery", "a red car"))
    assert src.retain_prompts(["paint"]) == ["a painting of a house", "an image of imagery", "a red car"]
    assert src.retain_prompts(["image", "RED"]) == ["a painting of a house", "a paint can"]


# --- SalUn's misaligned condition c′ ----------------------------------------------------------

def _c_prime(prompts, concept, erased=None, default=lambda p, c: "DEFAULT", pool=lambda c: ["dog", "cat", "bird"], **kw):
    cfg = make_config("salun", kw)
    return misaligned_prompts(cfg, prompts, [concept] * len(prompts), erased or [concept], default, pool)


def test_salun_anchor_choices_make_the_intended_prompts():
    prompts = ["a photo of cat", "a painting of a cat on a mat"]
    assert _c_prime(prompts, "cat") == ["DEFAULT", "DEFAULT"]  # null: the model's default
    assert _c_prime(prompts, "cat", anchor="") == ["a photo of", "a painting of a on a mat"]
    assert _c_prime(prompts, "cat", anchor="tiger") == ["a photo of tiger", "a painting of a tiger on a mat"]
    full = "a photo of a person wearing clothes"
    assert _c_prime(prompts, "cat", anchor=full, anchor_replaces="prompt") == [full, full]
    rand = _c_prime(prompts * 20, "cat", anchor="random")
    used = {p.removeprefix("a photo of ").removeprefix("a painting of a ").removesuffix(" on a mat") for p in rand}
    assert used == {"dog", "bird"}  # the concept itself is never drawn; both others are
    assert rand == _c_prime(prompts * 20, "cat", anchor="random")  # seeded


def test_salun_random_anchor_uses_the_pool_setting_and_skips_erased_concepts():
    got = _c_prime(["a photo of cat"] * 10, "cat", erased=["cat", "dog"], anchor="random", anchor_pool=["dog", "fox"])
    assert set(got) == {"a photo of fox"}
    with pytest.raises(EraseError, match="no candidate"):
        _c_prime(["a photo of cat"], "cat", anchor="random", anchor_pool=["cat", "a cat toy"])


@pytest.mark.parametrize("anchor", ["cat", "CAT ", "a black cat"])
def test_salun_anchor_naming_the_concept_fails(anchor):
    with pytest.raises(EraseError, match="names the concept"):
        _c_prime(["a photo of cat"], "cat", anchor=anchor)


def test_salun_defaults_and_bad_anchor_settings():
    cfg = make_config("salun")
    assert cfg.mask_loss == "cfg" and cfg.mask_guidance == 7.5 and cfg.anchor is None
    assert "tench" in IMAGENETTE_CLASSES and len(IMAGENETTE_CLASSES) == 10
    with pytest.raises(EraseError, match="anchor_replaces"):
        make_config("salun", {"anchor_replaces": "sentence"})
    with pytest.raises(EraseError, match="anchor_pool"):
        make_config("salun", {"anchor_pool": []})


def test_salun_anchor_reaches_the_forget_set(tiny_pipe):
    from erase.methods.job import ErasureJob
    from erase.methods.salun import anchors_for
    from erase.prompts import prompt_source_for

    job = ErasureJob(pipe=tiny_pipe, concepts=["circle"], prompts=prompt_source_for(tiny_pipe))
    cfg = make_config("salun", {"anchor": "square"})
    forget = job.forget_set(2, steps=1, guidance_scale=1.0, seed=0, anchors=anchors_for(job, cfg))
    assert forget.anchor_prompts == [p.replace("circle", "square") for p in forget.prompts]
    with pytest.raises(EraseError, match="names the concept"):
        erase_concepts(tiny_pipe, "circle", "salun", {"anchor": "circle", "n_forget_images": 1, "generation_steps": 1})


@needs_bundled
def test_salun_random_anchor_on_the_toy_world_draws_same_kind_concepts():
    from erase.methods.job import ErasureJob
    from erase.methods.salun import default_pool
    from erase.models import load_pipeline
    from erase.prompts import prompt_source_for
    from erase.toyworld import SHAPES

    pipe = load_pipeline(None)
    job = ErasureJob(pipe=pipe, concepts=["star"], prompts=prompt_source_for(pipe))

    got = misaligned_prompts(make_config("salun", {"anchor": "random"}), ["a red solid star"] * 30, ["star"] * 30,
                             ["star"], default=None, pool=lambda c: default_pool(job, c))
    assert {p.split()[-1] for p in got} == set(SHAPES) - {"star"}


# --- fp16 saliency ----------------------------------------------------------------------------

@needs_bundled
def test_fp16_saliency_has_no_underflow_zeros_and_matches_fp32():
    """Under CPU fp16 autocast, unscaled saliency gradients underflow (hundreds of exact zeros);
    with the loss scaling of accumulate_gradients none are left and the mask matches fp32."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from erase.data import add_noise, encode_prompts, generate_latents
    from erase.models import load_pipeline
    from erase.saliency import accumulate_gradients, compute_mask
    from erase.training import select_parameters

    pipe = load_pipeline(None)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    names = list(select_parameters(pipe.unet, "cross_attn"))
    prompts = ["a red solid star", "a blue striped star", "a green outlined star", "a yellow solid star"]
    latents, _ = generate_latents(pipe, prompts, 4, steps=10, seed=0)
    emb, _ = encode_prompts(pipe, prompts)

    def saliency(half: bool, scale: float):
        gen = torch.Generator().manual_seed(1)

        def loss_fn(idx):
            x_t, noise, t = add_noise(sched, latents[idx], gen)
            with torch.autocast("cpu", dtype=torch.float16, enabled=half):
                pred = pipe.unet(x_t, t, encoder_hidden_states=emb[idx]).sample
            return -F.mse_loss(pred.float(), noise)

        return accumulate_gradients(pipe.unet, loss_fn, [torch.arange(4)], param_names=names, loss_scale=scale)

    fp32, fp16, unscaled = saliency(False, 1.0), saliency(True, 2.0**16), saliency(True, 1.0)
    zeros = lambda s: sum(int((v == 0).sum()) for v in s.values())  # noqa: E731
    assert zeros(fp32) == 0 and zeros(unscaled) > 50  # the failure this guards against
    assert zeros(fp16) == 0
    m32, m16 = compute_mask(fp32), compute_mask(fp16)
    agree = sum(int((m32[k] == m16[k]).sum()) for k in m32) / sum(m.numel() for m in m32.values())
    assert agree >= 0.999


def test_loss_scaling_is_exact_in_fp32_and_backs_off_on_overflow():
    from erase.saliency import accumulate_gradients

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    batches = [torch.randn(5, 4) for _ in range(3)]
    plain = accumulate_gradients(model, lambda x: model(x).pow(2).mean(), batches, loss_scale=1.0)
    scaled = accumulate_gradients(model, lambda x: model(x).pow(2).mean(), batches)
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)
    huge = accumulate_gradients(model, lambda x: model(x).pow(2).mean() * 1e30, batches, loss_scale=2.0**100)
    assert all(torch.isfinite(v).all() for v in huge.values())
    assert all(torch.allclose(huge[k], plain[k] * 1e30, rtol=1e-4) for k in plain)


# --- FMN ----------------------------------------------------------------------------------------

def test_fmn_use_pooler_adds_the_end_of_text_position(tiny_pipe):
    from erase.methods.fmn import with_pooler
    from erase.methods.job import ErasureJob
    from erase.prompts import prompt_source_for

    job = ErasureJob(pipe=tiny_pipe, concepts=["van gogh"], prompts=prompt_source_for(tiny_pipe))
    forget = job.forget_set(2, steps=1, guidance_scale=1.0, seed=0)
    before = [list(p) for p in forget.positions]
    with_pooler(tiny_pipe.tokenizer, forget)
    tok = tiny_pipe.tokenizer
    for old, new, ids, prompt in zip(before, forget.positions, forget.token_ids, forget.prompts):
        n_words = len(tok(prompt).input_ids)  # BOS + words + EOS
        assert new == old + [n_words - 1] and ids[n_words - 1] == tok.eos_token_id


def test_fmn_pooler_raises_the_watched_mass(tiny_folder):
    from erase.models import load_pipeline

    off = erase_concepts(load_pipeline(tiny_folder), "van gogh", "fmn", dict(FAST_FMN, use_pooler=False))
    on = erase_concepts(load_pipeline(tiny_folder), "van gogh", "fmn", dict(FAST_FMN, use_pooler=True))
    assert on.stats["attention_mass_before"] > off.stats["attention_mass_before"]


def test_fmn_style_templates(tiny_pipe, monkeypatch):
    import erase.methods.job as jobmod

    seen = []
    real = jobmod.ErasureJob.forget_set

    def record(self, *a, **k):
        out = real(self, *a, **k)
        seen.extend(out.prompts)
        return out

    monkeypatch.setattr(jobmod.ErasureJob, "forget_set", record)
    erase_concepts(tiny_pipe, "van gogh", "fmn", dict(FAST_FMN, concept_type="style", n_forget_images=5))
    from erase.concepts import STYLE_TEMPLATES

    assert sorted(seen) == sorted(t.format("van gogh") for t in STYLE_TEMPLATES)
    assert "a painting in the style of van gogh" in seen
    with pytest.raises(EraseError, match="concept_type"):
        make_config("fmn", {"concept_type": "painting"})


def test_fmn_textual_inversion_leaves_the_text_side_unchanged(tiny_pipe):
    tok_len = len(tiny_pipe.tokenizer)
    vocab = dict(tiny_pipe.tokenizer.get_vocab())
    te = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    hooks = len(tiny_pipe.text_encoder.get_input_embeddings()._forward_hooks)
    r = erase_concepts(tiny_pipe, "van gogh", "fmn", dict(FAST_FMN, use_ti=True, ti_steps=3, ti_tokens=3), inplace=False)
    assert len(r.stats["ti_vector_norms"]["van gogh"]) == 3
    assert r.stats["attention_mass_after"] < r.stats["attention_mass_before"]
    assert len(tiny_pipe.tokenizer) == tok_len and tiny_pipe.tokenizer.get_vocab() == vocab
    assert all(torch.equal(te[k], v) for k, v in tiny_pipe.text_encoder.state_dict().items())
    assert len(tiny_pipe.text_encoder.get_input_embeddings()._forward_hooks) == hooks
    unet_names = {n for n, _ in tiny_pipe.unet.named_parameters()}
    assert r.tensors and set(r.tensors) <= unet_names


def test_learned_vectors_replace_the_concept_tokens(tiny_pipe):
    from erase.data import encode_prompts
    from erase.inversion import encode_with_vectors, slot_ids

    ids, slots = slot_ids(tiny_pipe.tokenizer, "a painting by van gogh", "van gogh", 3)
    assert len(slots) == 3 and slots == list(range(slots[0], slots[0] + 3))
    vectors = torch.randn(3, tiny_pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        a = encode_with_vectors(tiny_pipe, ids[None], [slots], vectors)
        b = encode_with_vectors(tiny_pipe, ids[None], [slots], vectors * 2)
        plain, _ = encode_prompts(tiny_pipe, ["a painting by"])
    assert torch.allclose(a[0, : slots[0]], plain[0, : slots[0]], atol=1e-5)  # causal: the prefix is unchanged
    assert not torch.allclose(a[0, slots[0]:], b[0, slots[0]:])


# --- user images -------------------------------------------------------------------------------

def test_wide_image_is_centre_cropped_not_squashed():
    from PIL import Image

    from erase.data import square_crop

    # 300 x 100: red | green square in the middle | blue
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)
    arr[:, 100:200] = (0, 255, 0)
    arr[:, 200:] = (0, 0, 255)
    out = np.asarray(square_crop(Image.fromarray(arr), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert (np.abs(out - (0, 255, 0)).max(axis=-1) < 40).mean() > 0.95  # only the centre survives
    tall = np.asarray(square_crop(Image.fromarray(arr.transpose(1, 0, 2)), 50))
    assert tall.shape == (50, 50, 3) and (np.abs(tall.astype(int) - (0, 255, 0)).max(axis=-1) < 40).mean() > 0.95


def test_encode_images_uses_the_centre_crop(tiny_pipe, monkeypatch):
    from PIL import Image

    import erase.data as data

    calls = []
    real = data.square_crop
    monkeypatch.setattr(data, "square_crop", lambda img, size: calls.append(img.size) or real(img, size))
    lat = data.encode_images(tiny_pipe, [Image.new("RGB", (90, 30), "red")])
    assert calls == [(90, 30)] and lat.shape[-1] == lat.shape[-2]
