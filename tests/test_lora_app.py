"""The app's "load an erasure file" panel: a LoRA or delta becomes the tab's erasure."""

import json
import warnings

import pytest

from conftest import images_equal
from erase.api import erase_concepts
from erase.evaluation import generate
from erase.export import export_delta, load_delta
from erase.lora import export_lora
from erase.models import load_pipeline
from erase.reload import load_erasure

PROMPTS = ["a painting by van gogh", "a photo of a cat"]
SEEDS = [0, 1]
KV_FMN = dict(steps=3, lr=1e-2, n_forget_images=2, generation_steps=2, batch_size=2, scope="cross_attn_kv")


@pytest.fixture(scope="module")
def erasure(tiny_folder, tmp_path_factory):
    pipe = load_pipeline(tiny_folder)
    result = erase_concepts(pipe, "van gogh", "fmn", KV_FMN, inplace=False)
    folder = tmp_path_factory.mktemp("files")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        files = {"kohya": export_lora(result, folder / "kohya.safetensors", 4, "kohya", base=pipe)}
    files["delta"] = export_delta(result, folder / "delta.safetensors", base=pipe)
    return pipe, result, files


def test_the_app_loads_a_file_onto_the_current_model(erasure, tiny_folder, tmp_path):
    import gradio as gr

    from ui.diffusion import DiffusionCallbacks
    from ui.load_file import LoadFileCallbacks
    from ui.settings import all_settings
    from ui.state import ModelCache, Session

    pipe, result, files = erasure
    cache = ModelCache()
    cb = DiffusionCallbacks(cache, all_settings(["fmn"]), tmp_path)
    lf = LoadFileCallbacks(cb)
    session = Session()
    session.model = str(tiny_folder)
    status, stats = lf.load(session, str(files["kohya"]), "", [], progress=lambda *a, **k: None)
    assert "Loaded" in status and "LoRA" in status and stats["file_kind"] == "lora"
    assert session.result.concepts == ["van gogh"] and session.result.original == {}
    shared = cache.get(str(tiny_folder))
    expected = generate(shared, PROMPTS, SEEDS, steps=4, result=load_erasure(pipe, files["kohya"]))
    assert images_equal(generate(shared, PROMPTS, SEEDS, steps=4, result=session.result), expected)
    # then it compares like a fresh erasure, and exports again
    galleries = cb.compare(session, 1, "0", 2, 7.5, progress=lambda *a, **k: None)
    assert len(galleries[0]) == len(galleries[1]) > 0
    meta = load_delta(cb.export_delta(session))[1]
    assert meta["method"] == "fmn" and json.loads(meta["base_fingerprint"])["unet"]["sha256"]
    # a typed path works too; a bad one is a message on the page
    lf.load(session, None, str(files["delta"]), [], progress=lambda *a, **k: None)
    assert session.result.stats["file_kind"] == "delta"
    with pytest.raises(gr.Error, match="not found"):
        lf.load(session, None, str(tmp_path / "missing.safetensors"), [], progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="upload"):
        lf.load(session, None, "  ", [], progress=lambda *a, **k: None)
