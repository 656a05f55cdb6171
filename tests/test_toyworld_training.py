"""Training the toy-world model: seeded, and resuming from a checkpoint changes nothing."""

import json

import torch
from safetensors.torch import load_file

from erase.toyworld.training import TrainConfig, ckpt_dir, export, random_caption, train_diffusion


def _cfg(tmp_path, name, steps):
    return TrainConfig(work_dir=str(tmp_path / name), threads=1, vae_images=64, vae_steps=2, vae_batch=8,
                       images=64, steps=steps, batch=4, warmup=2, checkpoint_every=100)


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    straight = _cfg(tmp_path, "a", 4)
    assert train_diffusion(straight) == 4
    first = _cfg(tmp_path, "b", 4)
    assert train_diffusion(first, stop_after_seconds=0.0) == 1  # checkpoints and stops at once
    assert json.loads((ckpt_dir(first) / "state.json").read_text())["step"] == 1
    assert train_diffusion(first, resume=True) == 4
    for name in ("unet", "ema", "text_encoder"):
        a = load_file(str(ckpt_dir(straight) / f"{name}.safetensors"))
        b = load_file(str(ckpt_dir(first) / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    info = export(first, tmp_path / "out")
    assert info["step"] == 4 and (tmp_path / "out" / "model_index.json").is_file()


def test_random_captions_cover_full_partial_and_empty():
    import numpy as np

    rng = np.random.default_rng(0)
    caps = [random_caption((3, 5, 1), rng, 0.1, 0.15) for _ in range(300)]
    assert "" in caps
    assert any(c.endswith("orange striped star") for c in caps)
    assert any("star" in c and "orange" not in c for c in caps)  # a partial caption
    assert all(c == "" or "star" in c or "object" in c for c in caps)
