"""The evaluation command (scripts/evaluate.py, erase.robustness): errors, the tiny model's grids
and JSON, and the toy world's table with scores and post-attack UA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from erase.robustness import attack_settings, main
from erase.errors import EraseError

from conftest import bundled_available

ROOT = Path(__file__).resolve().parents[1]
FAST_TI = ["--set", "ti.steps=2", "--set", "ti.n_images=2", "--set", "ti.generation_steps=2", "--set", "ti.batch_size=2"]


def test_help_runs_as_a_script():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--attacks" in out.stdout and "--delta" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--concept", "van gogh", "--attacks", "gcg"], "unknown attack"),
    (["--concept", "van gogh", "--delta", "missing.safetensors"], "not found"),
    (["--concept", "van gogh", "--set", "steps=3"], "attack.key=value"),
    (["--concept", "van gogh", "--attacks", "ti", "--set", "prompt.k=3"], "not run"),
    (["--concept", "van gogh", "--attacks", "ti", "--set", "ti.steps=0"], "steps"),
    (["--concept", "van gogh", "--attacks", "ti", "--restarts", "0"], "restarts must be a positive integer, got 0"),
    (["--concept", "van gogh", "--attacks", "ti", "--restarts", "2"], "needs the toy world's judge"),
    (["--concept", "van gogh", "--seeds", "18446744073709552"], "scoring seed must be an integer from 0"),
    (["--concept", "van gogh", "--method-set", "seed=1"], "apply only when erasing here with a method"),
    (["--concept", "van gogh", "--method", "fmn", "--method-set", "stepz=3"], "unknown setting(s) for method fmn: stepz"),
    (["--concept", "van gogh", "--method", "fmn", "--method-set", "steps"], "--method-set expects key=value"),
    (["--concept", "van gogh", "--method", "fmm"], "unknown method 'fmm'"),
])
def test_bad_input_is_one_line(tiny_folder, capsys, argv, message):
    assert main(["--model", str(tiny_folder), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_an_out_folder_that_cannot_be_written_or_would_delete_the_input_is_refused_first(tiny_folder, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([str(tmp_path / "a_file" / "eval")], "is a file"),
        ([str(tiny_folder), "--overwrite"], "would replace"),  # --out the base model's folder
        ([str(tiny_folder.parent), "--overwrite"], "would replace"),  # or a folder holding it
    ]
    for out, message in cases:
        assert main(["--model", str(tiny_folder), "--concept", "van gogh", "--attacks", "ti", "--no-progress", "--out", *out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
    assert (tiny_folder / "model_index.json").is_file()


def test_an_erased_folder_names_the_components_it_changed(tiny_folder):
    """--erased FOLDER: the relapse attack fine-tunes the text encoder too where the folder's differs."""
    import torch

    from erase.models import load_pipeline
    from erase.robustness import changed_components

    base, erased = load_pipeline(tiny_folder), load_pipeline(tiny_folder)
    assert changed_components(base, erased) == ["unet"]
    with torch.no_grad():
        next(erased.text_encoder.parameters()).add_(1e-3)
    assert changed_components(base, erased) == ["unet", "text_encoder"]


def test_delta_and_erased_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--concept", "x", "--delta", "a", "--erased", "b"])
    assert e.value.code == 2


def test_attack_settings_from_yaml_and_set(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("ti: {steps: 10, lr: 0.01}\nprompt: {k: 3}\n")
    assert attack_settings(str(cfg), ["ti.steps=20", "relapse.lr=1e-4"]) == {
        "ti": {"steps": 20, "lr": 0.01}, "prompt": {"k": 3}, "relapse": {"lr": 1e-4}}
    cfg.write_text("ti: 3\n")
    with pytest.raises(EraseError, match="mapping"):
        attack_settings(str(cfg), None)


def test_tiny_model_writes_grids_and_json(tiny_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["--model", str(tiny_folder), "--concept", "van gogh", "--attacks", "ti", *FAST_TI, "--sampling-steps", "2",
               "--method", "fmn", "--method-set", "steps=3", "--method-set", "generation_steps=2",
               "--out", str(out), "--json", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["toyworld"] is False and "scores" not in report and report["erasure"]["method"] == "fmn"
    assert report["erasure"]["config"]["steps"] == 3 and report["erasure"]["config"]["generation_steps"] == 2
    assert report["attacks"]["ti"]["UA"] is None and all("<ti-0>" in p for p in report["attacks"]["ti"]["prompts"])
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "grid_attacks.png", "grid_prompts_ti.png"}
    assert main(["--model", str(tiny_folder), "--concept", "van gogh", "--attacks", "", "--out", str(out), "--no-progress"]) == 2


@pytest.mark.skipif(not bundled_available(), reason="bundled toy-world model missing")
def test_toy_world_table_with_scores_and_post_attack_ua(tmp_path):
    """The Python entry point on the bundled model, from a delta file (few sampling steps: fast)."""
    import erase
    from erase import erase_concepts, export_delta, load_pipeline

    pipe = load_pipeline(None)
    delta = export_delta(erase_concepts(pipe, ["square"], "uce", inplace=False), tmp_path / "uce.safetensors")
    report = erase.evaluate(pipe=pipe, concept="square", delta=delta, attacks="ti", sampling_steps=4, restarts=2,
                            attack_configs={"ti": {"steps": 4, "n_images": 4, "generation_steps": 4}})
    s, ti = report["scores"], report["attacks"]["ti"]
    assert ti["UA"] == min(ti["stats"]["restarts"]["UA"]) and "best of 2 restarts" in report["table"]
    assert report["toyworld"] and s["n_forget"] == 18 and 0 <= s["UA"] <= 1 and 0 <= ti["UA"] <= 1
    assert report["erasure"]["method"] == "uce" and "| ti |" in report["table"] and "| erased |" in report["table"]
    assert report["base_UA"] <= 0.5  # the base model draws squares: an attack has something to bring back


@pytest.mark.skipif(not bundled_available(), reason="bundled toy-world model missing")
def test_attacking_a_concept_the_base_model_never_drew_is_refused(monkeypatch):
    """A base model whose UA is already high has nothing to bring back: one line, before any attack.
    (Every toy-world concept is drawn, so the threshold is lowered below the base model's UA.)"""
    import erase
    import erase.robustness as robustness
    from erase import load_pipeline

    monkeypatch.setattr(robustness, "MAX_BASE_UA", -0.01)
    with pytest.raises(EraseError, match="does not draw 'square'"):
        erase.evaluate(pipe=load_pipeline(None), concept="square", attacks="ti", sampling_steps=2)
