import pytest
import torch

from erase.attention import AttentionRecorder, cross_attention_names, record_cross_attention
from erase.concepts import concept_positions


def _inputs(pipe, prompts, seed=0):
    from erase.data import encode_prompts

    emb, ids = encode_prompts(pipe, prompts)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), 4, 8, 8, generator=g)
    return x, torch.full((len(prompts),), 500), emb


def test_recording_processor_matches_sdpa(tiny_pipe):
    unet = tiny_pipe.unet
    x, t, emb = _inputs(tiny_pipe, ["a painting by van gogh"])
    ref = unet(x, t, emb).sample
    rec = AttentionRecorder()
    with record_cross_attention(unet, rec):
        rec.set_positions([[1]])
        out = unet(x, t, emb).sample
    assert torch.allclose(out, ref, atol=1e-5)
    assert set(rec.records) == {n.removesuffix(".processor") for n in cross_attention_names(unet)}


def test_records_the_concept_columns_batch_major(tiny_pipe):
    unet, tok = tiny_pipe.unet, tiny_pipe.tokenizer
    prompts = ["a painting by van gogh", "a photo of a red circle"]
    _, pos0 = concept_positions(tok, prompts[0], "van gogh")
    _, pos1 = concept_positions(tok, prompts[1], "circle")
    x, t, emb = _inputs(tiny_pipe, prompts)
    L = tok.model_max_length
    every = AttentionRecorder()
    picked = AttentionRecorder()
    with record_cross_attention(unet, every):
        every.set_positions([list(range(L))] * 2)
        unet(x, t, emb)
    with record_cross_attention(unet, picked):
        picked.set_positions([pos0, pos1])
        unet(x, t, emb)
    for layer, (full,) in every.records.items():
        (sel,) = picked.records[layer]
        assert torch.allclose(sel[0, ..., : len(pos0)], full[0][..., pos0])
        assert torch.allclose(sel[1, ..., : len(pos1)], full[1][..., pos1])
        assert torch.all(sel[1, ..., len(pos1):] == 0)  # padding of the shorter position list
        assert torch.allclose(full.sum(-1), torch.ones_like(full.sum(-1)), atol=1e-4)  # rows are softmaxes
    # batch-major: item 1 alone records what it recorded inside the batch
    alone = AttentionRecorder()
    with record_cross_attention(unet, alone):
        alone.set_positions([pos1])
        unet(x[1:], t[1:], emb[1:])
    for layer, (one,) in alone.records.items():
        assert torch.allclose(one[0, ..., : len(pos1)], picked.records[layer][0][1, ..., : len(pos1)], atol=1e-5)


def test_processors_restored_after_error_and_self_attention_untouched(tiny_pipe):
    unet = tiny_pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    rec = AttentionRecorder()
    with pytest.raises(RuntimeError, match="boom"):
        with record_cross_attention(unet, rec):
            inside = unet.attn_processors
            assert all(type(inside[k]).__name__ == "RecordingAttnProcessor" for k in cross_attention_names(unet))
            assert all(type(inside[k]) is before[k] for k in inside if "attn1" in k)
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_guidance_batch_records_conditional_half(tiny_pipe):
    unet = tiny_pipe.unet
    x, t, emb = _inputs(tiny_pipe, ["a photo of a cat", "a painting by van gogh"])
    rec = AttentionRecorder(detach=True)
    with record_cross_attention(unet, rec):
        rec.set_positions([[1, 2]])
        unet(x, t, emb)
    assert all(r[0].shape[0] == 1 for r in rec.records.values())
    with pytest.raises(ValueError, match="positions for 1 prompts"):
        with record_cross_attention(unet, rec):
            rec.set_positions([[1]])
            unet(torch.cat([x, x[:1]]), torch.cat([t, t[:1]]), torch.cat([emb, emb[:1]]))
