"""rece-adv: RECE's edit, then adversarial training of the UNet outside cross-attention."""

import pytest
import torch

from erase.api import erase_concepts
from erase.errors import EraseError

FAST = {"preserve": ["dog"], "iterations": 3, "ddim_steps": 2, "attack_steps": 2, "retain_batch": 2, "retain_items": 4}


def test_starts_from_rece_and_trains_only_outside_cross_attention(tiny_pipe):
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    rece = erase_concepts(tiny_pipe, "van gogh", "rece", {"preserve": ["dog"]}, inplace=False)
    adv = erase_concepts(tiny_pipe, "van gogh", "rece-adv", FAST, inplace=False)
    assert all(torch.equal(p, before[n]) for n, p in tiny_pipe.unet.named_parameters())  # inplace=False: as it was
    cross = {k for k in adv.tensors if ".attn2." in k}
    # the cross-attention part is RECE's edit exactly; the rest is the trained scope (no_cross_attn)
    assert cross == set(rece.tensors) and all(torch.equal(adv.tensors[k], rece.tensors[k]) for k in cross)
    assert len(set(adv.tensors) - cross) > 10
    again = erase_concepts(tiny_pipe, "van gogh", "rece-adv", FAST, inplace=False)
    assert set(again.tensors) == set(adv.tensors) and all(torch.equal(again.tensors[k], adv.tensors[k]) for k in adv.tensors)


def test_the_target_is_the_edited_models_own_prediction(tiny_pipe):
    # with no adversarial and no retain term the only loss compares the model with RECE's edit to
    # its own prediction: zero at the start (a target from the unedited model would not be: the
    # edit moved the concept's prediction)
    r = erase_concepts(tiny_pipe, "van gogh", "rece-adv", {**FAST, "adversarial_weight": 0.0, "retain_weight": 0.0},
                       inplace=False)
    assert r.stats["loss_first"] < 1e-10 and r.stats["attacks"] == 0
    with_terms = erase_concepts(tiny_pipe, "van gogh", "rece-adv", FAST, inplace=False)
    assert with_terms.stats["loss_first"] > 1e-6 and with_terms.stats["attacks"] == 3


@pytest.mark.parametrize("bad, message", [
    ({"scope": "text_encoder"}, "scope must be one of"),
    ({"iterations": 0}, "iterations must be a positive integer"),
    ({"retain_weight": -1.0}, "retain_weight must be a number >= 0"),
])
def test_bad_settings_are_one_line_errors(tiny_pipe, bad, message):
    with pytest.raises(EraseError, match=message):
        erase_concepts(tiny_pipe, "van gogh", "rece-adv", {**FAST, **bad}, inplace=False)
