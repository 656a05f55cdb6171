"""Stable Diffusion pipelines built from config with seeded random weights.

They have no concepts to forget; they exist to exercise the machinery (hooks, saliency,
training, exports) in unit tests (``tiny``; ``tiny-sdxl``, an SDXL-shaped one with two text
encoders, pooled embeddings and added time ids) and to measure speed and memory on the real
architecture (``sd15``: the SD 1.5 UNet and CLIP ViT-L text encoder shapes, 512 px).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

# Words the synthetic tokenizer knows as whole tokens; other words fall apart into letters,
# as with a real BPE vocabulary.
WORDS = (
    "a photo of an painting drawing picture by the in style with and cat dog car tree house "
    "van gogh monet picasso red green blue circle square star church garbage truck parachute "
    "on street lake bowl fruit table mountain landscape at sunset portrait woman city skyline night"
).split()


def write_word_tokenizer(folder: str | Path, words=WORDS, model_max_length: int = 16) -> Path:
    """Write a CLIPTokenizer (vocab.json + merges.txt) where each word is one token."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    for special in ("<|startoftext|>", "<|endoftext|>"):
        add(special)
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?":
        add(c)
        add(c + "</w>")
    merges: list[str] = []
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merge = f"{cur} {nxt}"
            if merge not in merges:
                merges.append(merge)
            cur += nxt
            add(cur)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>"})
    )
    return folder


def _components(kind: str, tokenizer):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = len(tokenizer)
    if kind == "tiny":
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=16,
            sample_size=16,
        )
        text = CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        )
    elif kind == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text = CLIPTextConfig(
            vocab_size=max(vocab_size, 49408), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        )
    else:
        raise ValueError(f"unknown synthetic pipeline {kind!r}; choose 'tiny', 'tiny-sdxl' or 'sd15'")
    text.bos_token_id = tokenizer.bos_token_id
    text.eos_token_id = tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    return unet, vae, CLIPTextModel(text)


def _sdxl_components(tokenizer):
    """SDXL's shape in miniature (after diffusers' own SDXL test components): two CLIP text
    encoders whose penultimate hidden states are concatenated (32 + 48 = 80-d context), the
    second with a projection (the pooled embedding), and a UNet with 'text_time' added embeddings
    (pooled 48 + 6 time ids x 8 = 96). The encoders differ in width as SDXL's do (768 and 1280):
    diffusers' from_single_file tells their weights apart by width only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=96,
        cross_attention_dim=80, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, norm_num_groups=16, sample_size=16,
    )
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    text_2 = CLIPTextConfig(**{**text.to_dict(), "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48})
    return unet, vae, CLIPTextModel(text), CLIPTextModelWithProjection(text_2)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def build_sdxl_pipeline(seed: int = 0):
    """A tiny StableDiffusionXLPipeline with seeded random weights (16 px). Its second tokenizer
    pads with '!' as SDXL's OpenCLIP tokenizer does, so the two encoders' ids differ."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = write_word_tokenizer(Path(tmp) / "tokenizer", model_max_length=16)
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(tok_dir), pad_token="!")
    torch.manual_seed(seed)
    unet, vae, text_encoder, text_encoder_2 = _sdxl_components(tokenizer)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(), force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(kind: str = "tiny", seed: int = 0):
    """A pipeline with seeded random weights: 'tiny' (16 px, ~0.5 M params), 'sd15', or 'tiny-sdxl'
    (a StableDiffusionXLPipeline, see :func:`build_sdxl_pipeline`)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    if kind == "tiny-sdxl":
        return build_sdxl_pipeline(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = write_word_tokenizer(Path(tmp) / "tokenizer", model_max_length=16 if kind == "tiny" else 77)
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    unet, vae, text_encoder = _components(kind, tokenizer)
    scheduler = _scheduler()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline_folder(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a synthetic pipeline and save it as a diffusers folder (safetensors)."""
    pipe = build_pipeline(kind, seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)
