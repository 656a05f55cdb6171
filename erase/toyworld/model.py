"""The bundled text-to-image model: ordinary diffusers/transformers components, tiny sizes.

``build_components(cfg)`` makes fresh (untrained) modules; ``save_pipeline`` writes them as a
diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from erase.files import replace_path
from erase.toyworld import tokenizer as tok
from erase.toyworld.render import SIZE


@dataclass
class ModelConfig:
    image_size: int = SIZE
    vae_channels: tuple[int, ...] = (16, 32)  # one downsampling: 32 px -> 16 x 16 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)  # latents 16 -> 8 -> 4
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = tok.MAX_LENGTH


def vae_config(cfg: ModelConfig) -> dict:
    n = len(cfg.vae_channels)
    return dict(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=16,
        sample_size=cfg.image_size, mid_block_add_attention=False,
    )


def unet_config(cfg: ModelConfig) -> dict:
    n = len(cfg.unet_channels)
    return dict(
        sample_size=cfg.image_size // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        # Cross-attention everywhere but the 16 x 16 level (three times faster on a CPU).
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=32,
    )


def text_config(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=tok.vocab_size(), hidden_size=cfg.text_width,
        intermediate_size=cfg.text_width * 4, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_tokens,
        projection_dim=cfg.text_width, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        hidden_act="quick_gelu",
    )


def scheduler_config() -> dict:
    # Stable Diffusion's training schedule.
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                steps_offset=1, prediction_type="epsilon")


def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config(cfg))


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(cfg))


def build_text_encoder(cfg: ModelConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config(cfg)))


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config())


def load_tokenizer(folder: Path | None = None):
    from transformers import CLIPTokenizer

    if folder is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="toyworld-tok-"))
        tok.save_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder))


def save_pipeline(folder: Path, vae, unet, text_encoder, extra: dict | None = None) -> None:
    """Write a diffusers folder (safetensors only) atomically: build beside it, then rename."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    tok.save_tokenizer(tmp / "tokenizer")
    build_scheduler().save_pretrained(tmp / "scheduler")
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if extra is not None:
        (tmp / "toyworld.json").write_text(json.dumps(extra, indent=2) + "\n")
    if folder.exists():  # keep what else lives there (the judge)
        for p in folder.iterdir():
            if p.is_file() and not (tmp / p.name).exists():
                shutil.copy2(p, tmp / p.name)
    replace_path(tmp, folder)


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)
