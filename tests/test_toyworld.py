"""The concept world: renderer, captions, tokenizer, bundled model and its loading errors."""

import json
import shutil

import numpy as np
import pytest

from erase.errors import EraseError
from erase.toyworld import (
    COLOURS, KINDS, SHAPES, STYLES, all_prompts, check_model_folder, concept_kind,
    default_model_path, prompts_for, retain_prompts, weights_dir,
)
from erase.toyworld.render import render, sample_dataset


def test_render_is_deterministic_for_a_seed():
    a = np.asarray(render("star", "red", "striped", 7))
    b = np.asarray(render("star", "red", "striped", 7))
    c = np.asarray(render("star", "red", "striped", 8))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    i1, c1, l1 = sample_dataset(20, seed=3)
    i2, c2, l2 = sample_dataset(20, seed=3)
    assert c1 == c2 and np.array_equal(l1, l2)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(i1, i2))


def test_render_draws_the_named_colour_and_style():
    solid = np.asarray(render("square", "blue", "solid", 0)).astype(int)
    outlined = np.asarray(render("square", "blue", "outlined", 0)).astype(int)
    blue = (solid[..., 2] - solid[..., 0] > 100).sum()
    assert blue > 60  # a filled blue object
    assert (outlined[..., 2] - outlined[..., 0] > 100).sum() < blue  # only its outline


def test_captions_name_their_labels():
    _, captions, labels = sample_dataset(50, seed=1)
    for cap, (s, c, st) in zip(captions, labels):
        words = cap.replace(",", " ").split()
        assert SHAPES[s] in words and COLOURS[c] in words and STYLES[st] in words


def test_concept_kinds_and_prompts():
    assert concept_kind("star") == "shape" and concept_kind("Red") == "colour" and concept_kind("striped") == "style"
    with pytest.raises(EraseError) as e:
        concept_kind("van gogh")
    assert "van gogh" in str(e.value) and "circle" in str(e.value) and "outlined" in str(e.value)
    assert len(all_prompts()) == len(SHAPES) * len(COLOURS) * len(STYLES)
    for concept in ("heart", "orange", "outlined"):
        named, kept = prompts_for(concept), retain_prompts(concept)
        assert all(concept in p.split() for p in named)
        assert not any(concept in p.split() for p in kept)
        assert sorted(named + kept) == sorted(all_prompts())
    more = prompts_for("star", n=40)  # cycles through the templates after the 18 combinations
    assert len(set(more)) == 40 and all("star" in p.split() for p in more)


def test_tokenizer_gives_one_token_per_known_word_and_pieces_for_unknown():
    from transformers import CLIPTokenizer

    from erase.toyworld.tokenizer import first_piece_id, unknown_words

    tok = CLIPTokenizer.from_pretrained(str(default_model_path() / "tokenizer"))
    for word in [*SHAPES, *COLOURS, *STYLES, "photo", "drawing"]:
        ids = tok(word).input_ids
        assert len(ids) == 3 and ids[1] < first_piece_id(), word
    ids = tok("a photo of a dog").input_ids
    assert all(i >= first_piece_id() for i in ids[5:-1]) and len(ids) > 6
    assert unknown_words("a photo of a Dog") == ["dog"]
    assert tok.model_max_length == 16


def test_bundled_model_loads_with_plain_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    folder = default_model_path()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    size = sum(p.stat().st_size for p in weights_dir().rglob("*") if p.is_file())
    assert size < 40e6
    assert not list(weights_dir().rglob("*.bin")) and not list(weights_dir().rglob("*.pt"))
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    # pieces of unknown words share the unk embedding
    from erase.toyworld.tokenizer import first_piece_id

    emb = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(emb[first_piece_id()], emb[2])
    out = pipe("a red solid circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_bundled_model_loads_through_the_engine_when_present():
    models = pytest.importorskip("erase.models")
    if not hasattr(models, "load_pipeline"):
        pytest.skip("erase.models.load_pipeline does not exist yet")
    pipe = models.load_pipeline(None)
    assert pipe.unet.config.sample_size == 16


def _copy_weights(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(default_model_path(), dst)
    return dst


def test_missing_weight_file_says_how_to_rebuild(tmp_path):
    folder = _copy_weights(tmp_path)
    check_model_folder(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(EraseError, match="train_toyworld.py"):
        check_model_folder(folder)


def test_corrupt_weight_file_says_how_to_rebuild(tmp_path):
    folder = _copy_weights(tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(EraseError, match="train_toyworld.py") as e:
        check_model_folder(folder)
    assert "corrupt" in str(e.value)
