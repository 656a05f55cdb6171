"""Diffusers components -> one original-layout (CompVis/LDM) Stable Diffusion state dict.

The layout single-file tools read (``model.diffusion_model.*`` for the UNet,
``first_stage_model.*`` for the VAE, ``cond_stage_model.transformer.text_model.*`` for SD 1.x's
CLIP text encoder, ``cond_stage_model.model.*`` in OpenCLIP's layout for SD 2.x's) and that
``StableDiffusionPipeline.from_single_file`` converts back. The OpenCLIP names come from
diffusers' own key map (``DIFFUSERS_TO_LDM_MAPPING['openclip']``), inverted; q/k/v go into one
``in_proj`` tensor as OpenCLIP keeps them. SD 2.x files carry 23 of OpenCLIP ViT-H's 24 layers
and no ``text_projection`` (diffusers' SD 2 text encoder has no more; SD 2 reads the
penultimate layer, and diffusers ignores those keys when loading). The key map
is derived from the UNet's config (blocks, layers per block, which blocks have attention), so
it holds for SD 1.x/2.x shapes and for smaller UNets of the same family.

SDXL (the SGM layout of its original checkpoints): the UNet under ``model.diffusion_model.*``
with its added embedding as ``label_emb.0.0`` / ``label_emb.0.2`` (diffusers' own map,
``DIFFUSERS_TO_LDM_MAPPING['unet']['addition_embed_type']``), the VAE under
``first_stage_model.*``, the first text encoder in CLIP's layout under
``conditioner.embedders.0.transformer.text_model.*`` and the second in OpenCLIP's under
``conditioner.embedders.1.model.*``: every layer (SDXL reads the penultimate hidden state but
pools through the last layer and the final norm) and ``text_projection`` as OpenCLIP stores
it, (width, projection) = the diffusers Linear weight transposed, which diffusers' converter
transposes back.
"""

from __future__ import annotations

import torch

from erase.errors import EraseError

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def unet_key_map(unet) -> dict[str, str]:
    """diffusers UNet2DConditionModel key prefix -> LDM prefix (full keys come from the state dict)."""
    cfg = unet.config
    n = cfg.layers_per_block
    if not isinstance(n, int):
        raise EraseError("single-file export needs the same layers_per_block in every UNet block")
    blocks = len(cfg.block_out_channels)
    m = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    m.update(_embedding_map(cfg))
    for i in range(blocks):
        for j in range(n):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.1."
        if i < blocks - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (n + 1)}.0.op."
        has_attn = "CrossAttn" in cfg.up_block_types[i]
        for j in range(n + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (n + 1) + j}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (n + 1) + j}.1."
        if i < blocks - 1:
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (n + 1) + n}.{2 if has_attn else 1}."
    return m


def _embedding_map(cfg) -> dict[str, str]:
    """SDXL's added embedding ('text_time') and a projection class embedding, from diffusers' key map."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    mapping = DIFFUSERS_TO_LDM_MAPPING["unet"]
    keys = {}
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        keys.update(mapping["addition_embed_type"])
    if getattr(cfg, "class_embed_type", None) in ("timestep", "projection"):
        keys.update(mapping["class_embed_type"])
    # 'add_embedding.linear_1.weight' -> 'label_emb.0.0.weight' as a prefix map ('add_embedding.linear_1.' -> 'label_emb.0.0.')
    return {src.rsplit(".", 1)[0] + ".": dst.rsplit(".", 1)[0] + "." for src, dst in keys.items()}


def _rename(key: str, prefixes: dict[str, str]) -> str:
    # longest matching prefix wins ("down_blocks.1.resnets.0." before "down_blocks.1.")
    for src in sorted(prefixes, key=len, reverse=True):
        if key.startswith(src):
            return prefixes[src] + key[len(src):]
    raise EraseError(f"no single-file name for UNet tensor {key!r} (unsupported UNet layout)")


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    prefixes = unet_key_map(unet)
    out = {}
    for key, value in unet.state_dict().items():
        new = _rename(key, prefixes)
        if ".resnets." in key or key.startswith(("mid_block.resnets",)):
            for a, b in _RESNET:
                new = new.replace(f".{a}.", f".{b}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.block_out_channels)
    m = {}
    for i in range(blocks):
        m[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        m[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        m[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{blocks - 1 - i}.block."
        m[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{blocks - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        m[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        m[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        m[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        for src in sorted(m, key=len, reverse=True):
            if key.startswith(src):
                new = m[src] + key[len(src):]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if ".mid.attn_1." in new:
            for a, b in attn.items():
                new = new.replace(f".attn_1.{a}", f".attn_1.{b}")
            if new.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # linear -> 1x1 conv, as the original VAE stores it
        out["first_stage_model." + new] = value
    return out


CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
TEXT_ENCODER_LAYOUTS = ("auto", "clip", "openclip")


def text_encoder_to_ldm(text_encoder, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """A CLIPTextModel in the original CLIP layout ('<prefix>text_model.…'; transformers 5 drops
    that level, the files keep it)."""
    if type(text_encoder).__name__ != "CLIPTextModel":
        raise EraseError(f"single-file export supports a CLIPTextModel text encoder, not {type(text_encoder).__name__}")
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        out[prefix + "text_model." + key] = value
    return out


def text_encoder_to_openclip(text_encoder, prefix: str = OPENCLIP_PREFIX) -> dict[str, torch.Tensor]:
    """A CLIP text encoder in OpenCLIP's layout (SD 2.x checkpoints), from diffusers' key map."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    if type(text_encoder).__name__ not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise EraseError(f"single-file export supports a CLIP text encoder, not {type(text_encoder).__name__}")
    mapping = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state = {}
    for key, value in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        state[key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key] = value
    out = {}
    for src, dst in mapping["layers"].items():
        if src in state:
            value = state.pop(src)
            out[prefix + dst] = value.T.contiguous() if dst == "text_projection" else value
    renames = {src: dst for src, dst in mapping["transformer"].items() if not src.startswith("transformer.")}
    layers = "text_model.encoder.layers."
    for i in range(text_encoder.config.num_hidden_layers):
        head = f"{layers}{i}.self_attn."
        for part in ("weight", "bias"):
            qkv = [state.pop(f"{head}{p}_proj.{part}", None) for p in "qkv"]
            if any(t is None for t in qkv):
                raise EraseError(f"text encoder layer {i} has no separate q/k/v {part}: not a CLIP text model")
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{part}"] = torch.cat(qkv, 0)
    for key in [k for k in state if k.startswith(layers)]:
        new = key
        for src, dst in renames.items():  # diffusers -> OpenCLIP ('text_model.encoder.layers.' -> 'resblocks.', ...)
            new = new.replace(src, dst)
        out[f"{prefix}transformer.{new}"] = state.pop(key)
    if state:
        raise EraseError(f"no OpenCLIP name for text-encoder tensor {next(iter(state))!r}")
    return out


def choose_text_encoder_layout(pipe, layout: str = "auto") -> str:
    """'clip' (SD 1.x: cond_stage_model.transformer.*) or 'openclip' (SD 2.x); 'auto' picks by the
    model family, and is 'sdxl' for SDXL (CLIP and OpenCLIP under conditioner.embedders.*, fixed)."""
    from erase.models import model_family

    family = model_family(pipe)
    if layout not in TEXT_ENCODER_LAYOUTS and not (layout == "sdxl" and family == "sdxl"):
        raise EraseError(f"text_encoder_layout must be one of {', '.join(TEXT_ENCODER_LAYOUTS)}, got {layout!r}")
    if family == "sdxl":
        if layout not in ("auto", "sdxl"):
            raise EraseError(f"an SDXL checkpoint keeps its two text encoders in fixed layouts (CLIP and OpenCLIP): "
                             f"use text_encoder_layout='auto', not {layout!r}")
        return "sdxl"
    if layout != "auto":
        return layout
    return "openclip" if family == "sd2" else "clip"


def _text_encoders_to_ldm(pipe, layout: str) -> dict[str, torch.Tensor]:
    if layout == "sdxl":
        return {**text_encoder_to_ldm(pipe.text_encoder, SDXL_CLIP_PREFIX),
                **text_encoder_to_openclip(pipe.text_encoder_2, SDXL_OPENCLIP_PREFIX)}
    return text_encoder_to_openclip(pipe.text_encoder) if layout == "openclip" else text_encoder_to_ldm(pipe.text_encoder)


def pipeline_to_ldm(pipe, dtype: torch.dtype = torch.float32, text_encoder_layout: str = "auto") -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (contiguous CPU tensors); the text
    encoder in the CLIP (SD 1.x) or OpenCLIP (SD 2.x) layout, SDXL's two in theirs
    (``choose_text_encoder_layout``)."""
    layout = choose_text_encoder_layout(pipe, text_encoder_layout)
    text = _text_encoders_to_ldm(pipe, layout)
    state = {}
    for part in (unet_to_ldm(pipe.unet), vae_to_ldm(pipe.vae), text):
        state.update(part)
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
