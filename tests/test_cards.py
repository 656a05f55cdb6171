"""Model cards: README.md with the Hub's front matter for every exported diffusers folder and LoRA folder."""

import json
import warnings

import pytest
from huggingface_hub import ModelCard

from erase.api import erase_concepts
from erase.cards import REVEAL_NOTE, hub_base_model, model_card
from erase.export import export_diffusers
from erase.lora import LORA_WEIGHT_NAME, export_lora_folder
from erase.models import load_pipeline

KV_FMN = dict(steps=3, lr=1e-2, n_forget_images=2, generation_steps=2, batch_size=2, scope="cross_attn_kv")
SCORES = {"van gogh": {"UA": 0.97, "IRA": 0.9, "CRA": 1.0}}


@pytest.fixture(scope="module")
def erased(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    return pipe, erase_concepts(pipe, "van gogh", "fmn", KV_FMN, inplace=False)


def test_the_diffusers_folder_gets_a_card_the_hub_reads(erased, tmp_path, tiny_folder):
    pipe, result = erased
    folder = export_diffusers(pipe, result, tmp_path / "model", scores=SCORES)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert {"concept-erasure", "fmn"} <= set(data["tags"]) and "lora" not in data["tags"]
    assert data["erased_concepts"] == ["van gogh"]
    assert data["erase"]["settings"]["scope"] == "cross_attn_kv" and data["erase"]["settings"]["steps"] == 3
    assert data["erase"]["base_model"] == str(tiny_folder) and "base_model" not in data  # a local path is no Hub id
    recorded = json.loads(json.loads((folder / "erase.json").read_text())["base_fingerprint"])
    assert data["erase"]["base_fingerprint"] == recorded and recorded["unet"]["sha256"]
    metrics = {(m.metric_type, m.metric_value) for m in card.data.eval_results}
    assert {("UA", 97.0), ("IRA", 90.0), ("CRA", 100.0)} <= metrics
    assert REVEAL_NOTE in card.text and "| van gogh | 97 | 90 | 100 |" in card.text
    assert "from_pretrained" in card.text


def test_the_lora_folder_gets_a_card_and_both_layouts(erased, tmp_path):
    pipe, result = erased
    result.base_model = "runwayml/stable-diffusion-v1-5"  # as if erased from a Hub model
    try:
        info = export_lora_folder(result, tmp_path / "lora", 4, base=pipe)
    finally:
        result.base_model = "unused"
    names = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert names == sorted(["README.md", LORA_WEIGHT_NAME, "erase-van_gogh-fmn.safetensors"])
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "runwayml/stable-diffusion-v1-5" and data["base_model_relation"] == "adapter"
    assert {"concept-erasure", "fmn", "lora"} <= set(data["tags"]) and data["library_name"] == "diffusers"
    assert data["erase"]["lora"]["rank"] == 4 and data["erase"]["lora"]["files"]["kohya"] == "erase-van_gogh-fmn.safetensors"
    assert "eval_results" not in data and "model-index" not in data  # no scores measured: none claimed
    assert "<lora:erase-van_gogh-fmn:1>" in card.text and "load_lora_weights" in card.text and REVEAL_NOTE in card.text
    assert info["rank"] == 4 and info["left_out"] == []
    with pytest.raises(Exception, match="exists"):
        export_lora_folder(result, tmp_path / "lora", 4, base=pipe)


def test_left_out_tensors_are_named_in_the_card(tiny_folder, tmp_path):
    pipe = load_pipeline(tiny_folder)
    result = erase_concepts(pipe, "van gogh", "fmn", dict(KV_FMN, scope="cross_attn"), inplace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the folder export reports left-out tensors in the card, not as warnings
        info = export_lora_folder(result, tmp_path / "lora", "full", base=pipe)
    assert info["left_out"] and all(k.endswith(".bias") for k in info["left_out"])
    text = (tmp_path / "lora" / "README.md").read_text()
    assert f"Not in the LoRA: {len(info['left_out'])} changed tensor(s)" in text and info["left_out"][0] in text


def test_hub_base_model_only_for_hub_ids(tmp_path):
    assert hub_base_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    for local in ("bundled:toyworld", str(tmp_path), "./model", "unknown", "model.safetensors", None):
        assert hub_base_model(local) is None
    with pytest.raises(ValueError):
        model_card(None, kind="folder")


def test_the_app_exports_the_lora_folder(erased, tmp_path, tiny_folder):
    from ui.diffusion import DiffusionCallbacks
    from ui.settings import all_settings
    from ui.state import ModelCache, Session

    _, result = erased
    cb = DiffusionCallbacks(ModelCache(), all_settings(["fmn"]), tmp_path)
    session = Session()
    session.model = str(tiny_folder)
    session.result = result
    files = cb.export_lora(session, "8", progress=lambda *a, **k: None)
    assert [f.rsplit("/", 1)[1] for f in files] == ["erase-van_gogh-fmn.safetensors", LORA_WEIGHT_NAME, "README.md"]
    assert ModelCard.load(files[2]).data.to_dict()["erase"]["lora"]["rank"] == 8
