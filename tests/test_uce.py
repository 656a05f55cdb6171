"""UCE: what it changes, that it solves its least-squares problem, and that it erases on the toy world."""

import pytest
import torch

from conftest import bundled_available
from erase.api import erase_concepts
from erase.errors import EraseError
from erase.methods.job import ErasureJob
from erase.methods.uce import UCEConfig, _aligned, edit_matrix
from erase.prompts import prompt_source_for

needs_bundled = pytest.mark.skipif(not bundled_available(), reason="bundled toy-world weights missing")


def _state(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


@pytest.fixture(scope="module")
def toy():
    from erase.models import load_pipeline

    return load_pipeline(None)


def test_changes_only_cross_attention_keys_and_values(tiny_pipe):
    before = _state(tiny_pipe)
    r = erase_concepts(tiny_pipe, "van gogh", "uce", {"preserve": ["dog", "cat"]})
    changed = {n for n, p in _state(tiny_pipe).items() if not torch.equal(p, before[n])}
    assert changed and changed == set(r.tensors)
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    assert {n.rsplit(".", 2)[-2] for n in changed} == {"to_k", "to_v"}
    r = erase_concepts(tiny_pipe, "van gogh", "uce", {"preserve": ["dog"], "edit_keys": False}, inplace=False)
    assert r.tensors and all(".attn2.to_v." in n for n in r.tensors)


def test_edit_is_the_least_squares_solution(tiny_pipe):
    """W_new = W_old·M must equal an independent lstsq solve of the stacked weighted system."""
    cfg = UCEConfig(preserve=["dog", "cat"], erase_scale=2.0, preserve_scale=0.5, lamb=0.3)
    job = ErasureJob(pipe=tiny_pipe, concepts=["van gogh"], prompts=prompt_source_for(tiny_pipe))
    m, stats = edit_matrix(job, cfg)
    assert stats["erase_vectors"] > 0 and stats["preserve_vectors"] > 0
    w_old = tiny_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight.detach().double()
    # rebuild the system from the same embeddings the method used, through the public pieces
    from erase.data import encode_prompts
    from erase.methods.uce import _edit_pairs

    src = prompt_source_for(tiny_pipe)
    rows_c, rows_t = [], []
    for prompt in src.context_prompts("van gogh"):
        chosen, target, a_prompt = _edit_pairs(tiny_pipe.tokenizer, prompt, "van gogh", "", cfg.token_positions)
        e = encode_prompts(tiny_pipe, [prompt, a_prompt])[0].double()
        rows_c.append(e[0, chosen])
        rows_t.append(e[1, target])
        before = e[0, : min(chosen)]
        rows_c.append(before * (cfg.preserve_scale / cfg.erase_scale) ** 0.5)
        rows_t.append(before * (cfg.preserve_scale / cfg.erase_scale) ** 0.5)
    keep = encode_prompts(tiny_pipe, ["", *src.preserve_prompts(["dog", "cat"], ["van gogh"])])[0].double()
    keep = keep.reshape(-1, keep.shape[-1])
    d = keep.shape[1]
    a = torch.cat([cfg.erase_scale ** 0.5 * torch.cat(rows_c), cfg.preserve_scale ** 0.5 * keep, cfg.lamb ** 0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([cfg.erase_scale ** 0.5 * torch.cat(rows_t), cfg.preserve_scale ** 0.5 * keep, cfg.lamb ** 0.5 * torch.eye(d, dtype=torch.float64)])
    m_ref = torch.linalg.lstsq(a, b).solution.T  # W c ≈ W_old t for every row  <=>  M c ≈ t
    assert torch.allclose(w_old @ m, w_old @ m_ref, atol=1e-8, rtol=1e-6)


@needs_bundled
def test_concept_outputs_go_to_the_anchor_and_preserved_outputs_stay(toy):
    """On the toy world: the erased contexts' keys/values move most of the way to the anchor's
    (the rest is the least-squares compromise with the preserve set, which shares the same
    prefixes), while the preserved contexts' keys/values change by a few percent at most."""
    cfg = UCEConfig(anchor="triangle")
    job = ErasureJob(pipe=toy, concepts=["square"], prompts=prompt_source_for(toy))
    m, stats = edit_matrix(job, cfg)
    from erase.data import encode_prompts
    from erase.methods.uce import _edit_pairs

    src = prompt_source_for(toy)
    ce, ct = [], []
    for prompt in src.context_prompts("square")[:200]:
        chosen, target, a_prompt = _edit_pairs(toy.tokenizer, prompt, "square", "triangle", cfg.token_positions)
        e = encode_prompts(toy, [prompt, a_prompt])[0].double()
        ce.append(e[0, chosen])
        ct.append(e[1, target])
    ce, ct = torch.cat(ce), torch.cat(ct)
    keep = encode_prompts(toy, src.preserve_prompts(["circle", "red", "solid"], ["square"])[:200])[0].double()
    keep = keep.reshape(-1, keep.shape[-1])
    w = toy.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_v.weight.detach().double()
    gap_before = (ce @ w.T - ct @ w.T).norm()
    gap_after = (ce @ (w @ m).T - ct @ w.T).norm()
    assert gap_after < 0.35 * gap_before  # measured 0.2: most of the way to the anchor
    kept = (keep @ (w @ m).T - keep @ w.T).norm() / (keep @ w.T).norm()
    assert kept < 0.08  # measured 0.05
    # the reference's reading (last token of the bare word) moves almost nothing in context
    m_ref, _ = edit_matrix(job, UCEConfig(anchor="triangle", token_positions="last", templates=["{}"]))
    assert (ce @ (w @ m_ref).T - ct @ w.T).norm() > 0.6 * gap_before  # measured 0.73


@needs_bundled
def test_uce_erases_a_shape_and_keeps_another(toy):
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import generate

    judge = load_judge()
    sq = ["a red solid square", "a blue striped square", "a green outlined square", "a yellow solid square"]
    ci = ["a red solid circle", "a blue striped circle", "a green outlined circle", "a yellow solid circle"]
    seeds = list(range(len(sq) + len(ci)))

    def shapes():
        return judge.logits(generate(toy, sq + ci, seeds, steps=12))["shape"].argmax(1).tolist()

    before = shapes()
    assert before[:4].count(1) >= 3 and before[4:].count(0) >= 3  # square = 1, circle = 0
    r = erase_concepts(toy, "square", "uce", inplace=False)
    assert r.stats["edit_seconds"] < 30
    with r.applied(toy):
        after = shapes()
    assert after[:4].count(1) == 0
    assert after[4:].count(0) >= before[4:].count(0)


def test_deterministic(tiny_pipe):
    a = erase_concepts(tiny_pipe, "van gogh", "uce", {"preserve": ["dog"]}, inplace=False)
    b = erase_concepts(tiny_pipe, "van gogh", "uce", {"preserve": ["dog"], "seed": 5}, inplace=False)
    assert set(a.tensors) == set(b.tensors) and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


@pytest.mark.parametrize("settings, message", [
    ({"preserve": ["van gogh"]}, "also being erased"),
    ({"preserve": ["dog", "gogh"]}, "also being erased"),
    ({"anchor": "Van Gogh"}, "is the concept being erased"),
    ({"preserve": ["§§"]}, "cannot be placed"),
    ({"token_positions": "middle"}, "token_positions"),
    ({"erase_scale": 0}, "erase_scale"),
    ({"lamb": -1.0}, "lamb"),
])
def test_bad_input_changes_nothing(tiny_pipe, settings, message):
    before = _state(tiny_pipe)
    with pytest.raises(EraseError, match=message):
        erase_concepts(tiny_pipe, "van gogh", "uce", settings)
    assert all(torch.equal(p, before[n]) for n, p in _state(tiny_pipe).items())


def test_alignment_of_positions():
    # "a photo of van gogh <eot> <pad>": concept at 4..5 (2 tokens) replaced by 1 token
    assert [_aligned(i, [4], 2, 1, 10) for i in (3, 4, 5, 6, 9)] == [3, 4, 4, 5, 8]
    # removed (anchor ''): the concept maps to what follows it in the anchor prompt
    assert [_aligned(i, [4], 2, 0, 10) for i in (4, 5, 6, 9)] == [4, 4, 4, 7]
    # two occurrences, 1 token -> 2 tokens
    assert [_aligned(i, [2, 5], 1, 2, 12) for i in (2, 3, 5, 6)] == [3, 4, 7, 8]


@needs_bundled
def test_several_concepts_in_one_edit(toy):
    """Erasing a shape and a colour together: both go, a third concept of each kind stays."""
    from erase.toyworld.judge import load_judge
    from erase.toyworld.metrics import generate

    judge = load_judge()
    prompts = ["a green solid square", "a blue outlined square",  # square (1) must go
               "a red solid circle", "a red striped star",  # red (0) must go
               "a blue solid triangle", "a yellow striped heart"]  # kept: triangle blue, heart yellow
    r = erase_concepts(toy, ["square", "red"], "uce", inplace=False)
    assert r.stats["anchors"] == {"square": "triangle", "red": "green"}
    with r.applied(toy):
        logits = judge.logits(generate(toy, prompts, list(range(len(prompts))), steps=12))
    shape, colour = logits["shape"].argmax(1).tolist(), logits["colour"].argmax(1).tolist()
    assert 1 not in shape[:2] and 0 not in colour[2:4]
    assert shape[4:] == [2, 4] and colour[4:] == [2, 3]
