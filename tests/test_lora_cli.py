"""scripts/erase.py --exports lora: both layouts in OUT/lora/, the rank setting, bad ranks."""

import json

from safetensors import safe_open

from erase.cli import main

KV = ["--method", "fmn", "--set", "steps=3", "--set", "lr=1e-2", "--set", "n_forget_images=2", "--set", "generation_steps=2",
      "--set", "batch_size=2", "--set", "scope=cross_attn_kv", "--seeds", "0", "--grid-steps", "2", "--no-progress"]


def test_lora_export_from_the_cli(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["--model", str(tiny_folder), "--concept", "van gogh", *KV, "--exports", "lora", "--lora-rank", "4", "--out", str(out)]) == 0
    lora = out / "lora"
    names = sorted(p.name for p in lora.iterdir())
    assert names == ["README.md", "erase-van_gogh-fmn.safetensors", "pytorch_lora_weights.safetensors"]
    assert not (out / "model").exists() and not (out / "delta.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora"]["rank"] == 4 and summary["lora"]["max_rank"] == 4 and summary["lora"]["left_out"] == []
    assert 0 < summary["lora"]["relative_error_max"] < 1
    with safe_open(str(lora / "erase-van_gogh-fmn.safetensors"), framework="pt") as f:
        assert f.metadata()["lora_rank"] == "4" and all(k.startswith("lora_unet_") for k in f.keys())
    # the folder loads as it is: diffusers picks pytorch_lora_weights.safetensors
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    plain.load_lora_weights(str(lora))
    assert plain.get_list_adapters()


def test_bad_rank_on_the_cli_is_one_line_before_any_work(tiny_folder, tmp_path, capsys):
    for rank, message in (("0", "at least 1"), ("x", "positive whole number"), ("40", "above the size of every changed weight")):
        out = tmp_path / f"out{rank}"
        assert main(["--model", str(tiny_folder), "--concept", "van gogh", *KV, "--exports", "lora", "--lora-rank", rank, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_score_puts_the_judges_numbers_into_summary_and_cards(tmp_path, monkeypatch, capsys, tiny_folder):
    import pytest

    from conftest import bundled_available

    # not a toy-world model: refused in one line before any training
    out = tmp_path / "tiny"
    assert main(["--model", str(tiny_folder), "--concept", "van gogh", *KV, "--score", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "toy world" in err and "\n" not in err and not out.exists()
    if not bundled_available():
        pytest.skip("bundled toy-world weights missing")
    import erase.toyworld.metrics as metrics

    calls = []

    def fake_scores(pipe, concepts, seed=0, **kw):  # the real judge takes minutes on a CPU; its wiring is what is tested
        calls.append(list(concepts))
        return {c: {"UA": 0.95, "IRA": 0.9, "CRA": 0.85, "UA_heldout": 0.8, "seconds": 1.0} for c in concepts}

    monkeypatch.setattr(metrics, "world_scores", fake_scores)
    out = tmp_path / "toy"
    assert main(["--concept", "square", "--method", "uce", "--exports", "diffusers", "lora", "--score", "--seeds", "0",
                 "--grid-steps", "2", "--no-progress", "--out", str(out)]) == 0
    assert calls == [["square"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"] == {"square": {"UA": 0.95, "IRA": 0.9, "CRA": 0.85, "UA_heldout": 0.8}}
    for card in (out / "model" / "README.md", out / "lora" / "README.md"):
        text = card.read_text()
        assert "value: 95.0" in text and "| square | 95 | 90 | 85 | 80 |" in text
