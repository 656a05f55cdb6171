"""The judge and the erasure metrics on the bundled model."""

import numpy as np
import pytest

from erase.errors import EraseError
from erase.toyworld.judge import load_judge
from erase.toyworld.metrics import erasure_scores, frechet_distance
from erase.toyworld.render import sample_dataset


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    from erase.toyworld import default_model_path

    return StableDiffusionPipeline.from_pretrained(str(default_model_path()))


def test_judge_reads_fresh_renders(judge):
    images, _, labels = sample_dataset(300, seed=12345)
    acc = judge.accuracy(images, labels)
    assert set(acc) == {"shape", "colour", "style"}
    assert min(acc.values()) >= 0.97, acc
    names = judge.classify(images[:4])
    assert len(names["shape"]) == 4 and all(isinstance(n, str) for n in names["colour"])
    assert judge.features(images[:5]).shape[0] == 5


def test_corrupt_or_missing_judge_says_how_to_rebuild(tmp_path):
    with pytest.raises(EraseError, match="train_toyworld.py --judge"):
        load_judge(tmp_path)
    import shutil

    from erase.toyworld import weights_dir

    for name in ("judge.json", "judge.safetensors"):
        shutil.copy(weights_dir() / name, tmp_path / name)
    load_judge(tmp_path)
    (tmp_path / "judge.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(EraseError, match="corrupt"):
        load_judge(tmp_path)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    near, far = frechet_distance(a, b), frechet_distance(a, b + 2.0)
    assert near < 1.0 < far
    assert far == pytest.approx(near + 4 * 8, rel=0.1)


def test_unknown_concept_is_a_clear_error(pipe):
    with pytest.raises(EraseError, match="known shapes: circle"):
        erasure_scores(pipe, "dog")


def test_unmodified_model_keeps_its_concepts(pipe, judge):
    s = erasure_scores(pipe, "green", seeds=(0,), steps=8, judge=judge, max_retain=18)
    assert s["kind"] == "colour" and s["n_forget"] == 18 and s["n_retain"] == 18
    assert s["UA"] <= 0.3, s  # the untouched model still draws green
    assert s["IRA"] >= 0.7 and s["CRA"] >= 0.6, s
    assert s["distance"] >= 0 and s["seconds"] > 0


def test_metrics_see_a_concept_swapped_out(pipe, judge):
    """Give "green" the embedding of "red": prompts naming green now draw red, so UA is high."""
    import torch

    tok = pipe.tokenizer
    green, red = tok.convert_tokens_to_ids("green</w>"), tok.convert_tokens_to_ids("red</w>")
    emb = pipe.text_encoder.get_input_embeddings().weight
    saved = emb[green].detach().clone()
    try:
        with torch.no_grad():
            emb[green] = emb[red]
        s = erasure_scores(pipe, "green", seeds=(0,), steps=8, judge=judge, max_retain=6)
    finally:
        with torch.no_grad():
            emb[green] = saved
    assert s["UA"] >= 0.8, s
    assert s["IRA"] >= 0.7, s  # the other colours are untouched
