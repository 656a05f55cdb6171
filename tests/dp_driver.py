"""Runs every fine-tuning method on a pipeline folder and saves what process 0 got (deltas, SalUn's
mask, the losses) to OUT. Run plainly (one process) or under ``accelerate launch`` (data-parallel):
tests/test_data_parallel.py compares the two.

    python tests/dp_driver.py MODEL OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# small settings that still split every batch in two, cover a short last batch (SalUn: 5 forget
# images in batches of 2) and both advunlearn scopes with their retain terms
RUNS = {
    "fmn": ("fmn", dict(steps=4, lr=1e-3, n_forget_images=4, generation_steps=2, batch_size=2)),
    "salun": ("salun", dict(epochs=1, lr=1e-3, n_forget_images=5, n_retain_images=4, generation_steps=2, batch_size=2)),
    "esd": ("esd", dict(iterations=4, lr=1e-3, ddim_steps=3, batch_size=2, train_method="xattn", neutral="prompt")),
    "advunlearn": ("advunlearn", dict(iterations=4, lr=1e-3, ddim_steps=2, batch_size=2, warmup=1, attack_steps=2,
                                      retain_on="embedding", retain_batch=2)),
    "advunlearn_unet": ("advunlearn", dict(iterations=3, lr=1e-3, ddim_steps=2, batch_size=2, warmup=1, attack_steps=2,
                                           scope="cross_attn", retain_batch=2, retain_items=4)),
}
CONCEPT = "van gogh"


def run_all(model: str | Path, out: str | Path, names=tuple(RUNS)) -> None:
    import torch
    from safetensors.torch import save_file

    from erase import erase_concepts
    from erase.distributed import current
    from erase.models import load_pipeline

    out = Path(out)
    losses = {}
    for name in names:
        method, cfg = RUNS[name]
        pipe = load_pipeline(model)
        result = erase_concepts(pipe, CONCEPT, method, cfg, inplace=False)
        if current().is_main:
            save_file({k: v.contiguous() for k, v in result.tensors.items()}, out / f"{name}.safetensors")
            if result.mask is not None:
                save_file({k: v.to(torch.uint8).contiguous() for k, v in result.mask.items()}, out / f"{name}_mask.safetensors")
            losses[name] = [result.stats["loss_first"], result.stats["loss_last"]]
    if current().is_main:
        (out / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # joins the launched processes (gloo on CPU)
    run_all(sys.argv[1], sys.argv[2])
