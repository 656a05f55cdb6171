import math

import pytest
import torch
from torch import nn

from erase.saliency import SaliencyMask, accumulate_gradients, compute_mask, load_mask, mask_fraction, save_mask


def _scores():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.rand(10, 10, generator=g), "b": torch.rand(7, generator=g) * 3, "c": torch.zeros(5)}


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.33, 1.0])
def test_global_mask_keeps_fraction_of_largest(fraction):
    s = _scores()
    m = compute_mask(s, fraction)
    n = sum(v.numel() for v in s.values())
    assert sum(int(v.sum()) for v in m.values()) == math.ceil(fraction * n)
    kept = torch.cat([s[k][m[k]] for k in s])
    dropped = torch.cat([s[k][~m[k]] for k in s])
    if len(dropped) and len(kept):
        assert kept.min() >= dropped.max()  # the largest saliencies, not the smallest


def test_per_layer_and_threshold_masks():
    s = _scores()
    m = compute_mask(s, 0.5, per_layer=True)
    assert {k: int(v.sum()) for k, v in m.items()} == {"a": 50, "b": 4, "c": 3}
    t = compute_mask(s, threshold=0.5)
    for k in s:
        assert torch.equal(t[k], s[k] >= 0.5)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, None])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        compute_mask(_scores(), fraction)


def test_accumulate_gradients_is_abs_of_summed_gradient():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    batches = [torch.randn(4, 3) for _ in range(3)]
    got = accumulate_gradients(model, lambda x: model(x).sum() * (1 if x[0, 0] > 0 else -1), batches, ["weight"])
    manual = torch.zeros(2, 3)
    for x in batches:
        model.zero_grad()
        (model(x).sum() * (1 if x[0, 0] > 0 else -1)).backward()
        manual += model.weight.grad
    assert torch.allclose(got["weight"], manual.abs())
    assert not model.bias.requires_grad and model.weight.requires_grad


def test_masked_training_moves_only_salient_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sal = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    mask = compute_mask(sal, 0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    with SaliencyMask(model, mask) as sm:
        for _ in range(5):
            model(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            sm.project_()
    moved_salient = 0
    for n, p in model.named_parameters():
        moved = p.detach() != before[n]
        assert not torch.any(moved & ~mask[n]), n
        moved_salient += int((moved & mask[n]).sum())
    assert moved_salient > 0.9 * sum(int(m.sum()) for m in mask.values())


def test_mask_round_trip(tmp_path):
    m = compute_mask(_scores(), 0.4)
    path = save_mask(tmp_path / "m.safetensors", m, {"method": "test"})
    back = load_mask(path)
    assert set(back) == set(m) and all(torch.equal(back[k], m[k]) for k in m)
    assert mask_fraction(back) == pytest.approx(mask_fraction(m))
