"""Loading erasures back: LoRA files, ESD/UCE-style partial UNet state dicts, base-model fingerprints,
scripts/evaluate.py --apply and scripts/erase.py --apply (the app's load panel: test_lora_app.py)."""

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import images_equal
from erase.api import erase_concepts
from erase.errors import EraseError
from erase.evaluation import generate
from erase.export import apply_delta, export_delta, load_delta
from erase.lora import export_lora, factorise
from erase.models import load_pipeline
from erase.reload import load_erasure

PROMPTS = ["a painting by van gogh", "a photo of a cat"]
SEEDS = [0, 1]
KV_FMN = dict(steps=6, lr=1e-2, n_forget_images=2, generation_steps=2, batch_size=2, scope="cross_attn_kv")


@pytest.fixture(scope="module")
def erasure(tiny_folder, tmp_path_factory):
    pipe = load_pipeline(tiny_folder)
    result = erase_concepts(pipe, "van gogh", "fmn", KV_FMN, inplace=False)
    folder = tmp_path_factory.mktemp("files")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        files = {layout: export_lora(result, folder / f"{layout}.safetensors", 4, layout, base=pipe) for layout in ("kohya", "diffusers")}
    files["delta"] = export_delta(result, folder / "delta.safetensors", base=pipe)
    return pipe, result, files


def _state(pipe):
    return {k: v.detach().clone() for k, v in {**pipe.unet.state_dict(), **pipe.text_encoder.state_dict()}.items()}


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_a_lora_loads_back_as_the_erasure_it_carries(erasure, tiny_folder, layout):
    pipe, result, files = erasure
    fresh = load_pipeline(tiny_folder)
    before = _state(fresh)
    loaded = load_erasure(fresh, files[layout])
    assert loaded.method == "fmn" and loaded.concepts == ["van gogh"] and loaded.stats["file_kind"] == "lora"
    assert loaded.stats["lora_layout"] == layout and loaded.stats["lora_rank"] == "4"
    merged = factorise(result, 4).merged(result.original)
    assert set(loaded.tensors) == set(merged)
    for k in merged:
        assert torch.allclose(loaded.tensors[k], merged[k], atol=1e-6), k
    # the base pipeline is as it was: same weights, no LoRA layers left behind
    after = _state(fresh)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert "lora" not in type(fresh.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k).__module__
    # rendered through the result, it gives what plain diffusers gives with the file loaded
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(files[layout]))
    ours = generate(fresh, PROMPTS, SEEDS, steps=4, result=loaded)
    theirs = generate(plain, PROMPTS, SEEDS, steps=4)
    diff = np.abs(np.stack([np.asarray(x, np.int16) for x in ours]) - np.stack([np.asarray(x, np.int16) for x in theirs]))
    assert diff.max() <= 1  # merged weights vs PEFT's separate branch: float rounding only


def test_esd_and_uce_style_state_dicts_load_as_deltas(erasure, tiny_folder, tmp_path):
    pipe, result, _ = erasure
    expected = generate(pipe, PROMPTS, SEEDS, steps=4, result=result)
    bare = tmp_path / "esd-van_gogh.safetensors"  # how ESD's / UCE's scripts save: diffusers names, no metadata
    save_file({k: v.contiguous() for k, v in result.tensors.items()}, str(bare))
    tensors, meta = load_delta(bare)
    assert meta["format"] == "state-dict" and set(tensors) == set(result.tensors)
    fresh = load_pipeline(tiny_folder)
    apply_delta(fresh, bare)
    assert images_equal(generate(fresh, PROMPTS, SEEDS, steps=4), expected)
    # 'unet.'-prefixed names load too; a file without concepts takes them from the caller
    prefixed = tmp_path / "uce.safetensors"
    save_file({f"unet.{k}": v.contiguous() for k, v in result.tensors.items()}, str(prefixed))
    loaded = load_erasure(load_pipeline(tiny_folder), prefixed, concepts=["van gogh"])
    assert loaded.stats["file_kind"] == "state-dict" and loaded.concepts == ["van gogh"] and loaded.method.startswith("unknown")
    # names and shapes are checked against the model before anything is written
    fresh = load_pipeline(tiny_folder)
    before = _state(fresh)
    name = next(iter(result.tensors))
    wrong_shape = tmp_path / "shape.safetensors"
    save_file({name: torch.zeros(3, 3), "conv_in.weight": torch.zeros_like(fresh.unet.conv_in.weight)}, str(wrong_shape))
    with pytest.raises(EraseError, match=r"made for another model: unet tensor .* has shape \(3, 3\)"):
        apply_delta(fresh, wrong_shape)
    wrong_name = tmp_path / "name.safetensors"
    save_file({"conv_in.weight": torch.zeros_like(fresh.unet.conv_in.weight), "down_blocks.9.attn2.to_k.weight": torch.zeros(2, 2)}, str(wrong_name))
    with pytest.raises(EraseError, match="has no tensor 'down_blocks.9.attn2.to_k.weight'"):
        apply_delta(fresh, wrong_name)
    after = _state(fresh)
    assert all(torch.equal(after[k], before[k]) for k in before)  # nothing half-applied


def test_another_base_model_is_refused_by_its_fingerprint(erasure, tmp_path, tiny_folder):
    from erase.synthetic import save_pipeline_folder

    pipe, result, files = erasure
    other = load_pipeline(save_pipeline_folder("tiny", tmp_path / "other", seed=1))  # same architecture, other weights
    meta = load_delta(files["delta"])[1]
    assert json.loads(meta["base_fingerprint"])["unet"]["sha256"]
    for path in (files["delta"], files["kohya"], files["diffusers"]):
        with pytest.raises(EraseError, match="made for another base model") as e:
            load_erasure(other, path)
        assert "\n" not in str(e.value)
    with pytest.raises(EraseError, match="made for another base model"):
        apply_delta(other, files["delta"])
    apply_delta(other, files["delta"], check_base=False)  # on request it goes in anyway (names and shapes fit)
    assert load_erasure(other, files["kohya"], check_base=False).stats["file_kind"] == "lora"
    # the fingerprint ignores the tensors the erasure changed: the same with the erasure applied
    from erase.fingerprint import base_fingerprint

    with result.applied(pipe):
        applied = base_fingerprint(pipe, exclude=result.tensors)
    assert applied == base_fingerprint(pipe, exclude=result.tensors) == json.loads(meta["base_fingerprint"])
    # the fp16 file of the same model has the same fingerprint (values are rounded to fp16 before hashing)
    halved = load_pipeline(tiny_folder)
    halved.unet.to(torch.float16).to(torch.float32)
    assert base_fingerprint(halved, exclude=result.tensors) == applied


def test_evaluate_refuses_a_delta_made_for_another_model(erasure, tmp_path, capsys):
    from erase.robustness import main
    from erase.synthetic import save_pipeline_folder

    other = save_pipeline_folder("tiny", tmp_path / "other", seed=1)
    capsys.readouterr()
    argv = ["--concept", "van gogh", "--delta", str(erasure[2]["delta"]), "--attacks", "", "--no-progress"]
    assert main(["--model", str(other), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "made for another base model" in err and "\n" not in err


def test_an_erasure_of_every_unet_weight_is_fingerprinted_on_the_text_encoder(erasure, tmp_path, tiny_folder):
    """scope 'full' changes every UNet tensor: the fingerprint moves to the text encoder and still
    tells another model of the same architecture apart."""
    from erase.fingerprint import base_fingerprint, check_base
    from erase.synthetic import save_pipeline_folder

    pipe = erasure[0]
    every = list(dict(pipe.unet.named_parameters()))
    fp = base_fingerprint(pipe, exclude=every)
    assert list(fp) == ["text_encoder"] and fp["text_encoder"]["sha256"]
    check_base(pipe, json.dumps(fp))  # its own base: accepted
    held_in_bf16 = load_pipeline(tiny_folder)  # as a GPU keeps the frozen text encoder
    held_in_bf16.text_encoder.to(torch.bfloat16)
    assert base_fingerprint(held_in_bf16, exclude=every)["text_encoder"]["sha256"] != fp["text_encoder"]["sha256"]
    check_base(held_in_bf16, json.dumps(fp))  # the same weights in another precision: accepted
    other = load_pipeline(save_pipeline_folder("tiny", tmp_path / "other", seed=1))
    with pytest.raises(EraseError, match="made for another base model: its text_encoder fingerprint"):
        check_base(other, json.dumps(fp), source="full.safetensors")


def test_files_that_are_not_erasures_are_refused(erasure, tmp_path, tiny_folder):
    pipe, _, files = erasure
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04junk")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors at all")
    single = tmp_path / "single.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(single))
    for path, message in ((pickled, "not a .safetensors file"), (broken, "not a readable safetensors file"),
                          (single, "single-file checkpoint"), (tmp_path / "missing.safetensors", "not found")):
        with pytest.raises(EraseError, match=message) as e:
            load_erasure(pipe, path)
        assert "\n" not in str(e.value)
    with pytest.raises(EraseError, match="is a LoRA, not a delta"):
        apply_delta(pipe, files["kohya"])
    # a LoRA whose modules this model does not have
    lora = tmp_path / "other-model-lora.safetensors"
    save_file({"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.ones(1, 8),
               "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.ones(8, 1)}, str(lora))
    fresh = load_pipeline(tiny_folder)
    before = _state(fresh)
    with pytest.raises(EraseError, match="another model|does not fit") as e:
        load_erasure(fresh, lora)
    assert "\n" not in str(e.value)
    after = _state(fresh)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_evaluate_apply_and_erase_apply(erasure, tiny_folder, tmp_path, capsys):
    from erase.cli import main as erase_main
    from erase.robustness import main as evaluate_main

    _, _, files = erasure
    out = tmp_path / "eval"
    assert evaluate_main(["--model", str(tiny_folder), "--apply", str(files["kohya"]), "--concept", "van gogh", "--attacks", "",
                          "--sampling-steps", "2", "--no-progress", "--out", str(out), "--json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["erasure"]["kind"] == "file" and report["erasure"]["file_kind"] == "lora" and report["erasure"]["method"] == "fmn"
    assert (out / "grid_attacks.png").is_file()
    capsys.readouterr()
    assert evaluate_main(["--model", str(tiny_folder), "--apply", str(tmp_path / "nope.safetensors"), "--concept", "van gogh",
                          "--attacks", "", "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    # scripts/erase.py --apply: no training, the other exports from the file
    run = tmp_path / "run"
    assert erase_main(["--model", str(tiny_folder), "--apply", str(files["diffusers"]), "--exports", "diffusers", "delta",
                       "--seeds", "0", "--grid-steps", "2", "--no-progress", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["applied_from"] == str(files["diffusers"]) and summary["concepts"] == ["van gogh"] and summary["method"] == "fmn"
    assert (run / "model" / "model_index.json").is_file() and (run / "delta.safetensors").is_file()
