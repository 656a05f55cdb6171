"""How a pipeline conditions its UNet on text: one place for SD 1.x/2.x and SDXL.

SD 1.x/2.x: the text encoder's last hidden states are the UNet's ``encoder_hidden_states``.
SDXL: the penultimate hidden states of both text encoders, concatenated, plus two added inputs
(``added_cond_kwargs``): the second encoder's pooled (projected) embedding and six "time ids"
(original size, crop corner, target size). Exactly as ``StableDiffusionXLPipeline`` makes them.

The methods keep, index, concatenate and cache one embedding tensor per prompt. So that they
need not carry SDXL's two extra inputs beside it, an SDXL embedding is *packed*: one extra
row after the tokens holds ``[pooled, time ids, zeros]``. :func:`unet_inputs` unpacks it for the
UNet; :func:`token_states` gives the tokens alone (what cross-attention keys and values see,
e.g. for UCE's closed form). On SD 1.x/2.x nothing is packed and both are the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erase.errors import EraseError

__all__ = [
    "is_sdxl", "text_encoder_names", "text_encoders", "token_ids", "stack_ids", "first_ids", "encode", "unet_inputs",
    "token_states", "unconditional", "time_ids", "pooled_width", "pipeline_inputs",
]

TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


def _unet(obj):
    unet = getattr(obj, "unet", obj)
    return getattr(unet, "module", unet)  # a wrapped (DDP) module


def is_sdxl(obj) -> bool:
    """True for an SDXL UNet (or a pipeline with one): it takes pooled text embeddings and time ids."""
    return getattr(_unet(obj).config, "addition_embed_type", None) == "text_time"


def pooled_width(obj) -> int:
    """Width of the pooled text embedding an SDXL UNet takes (its added-embedding input minus the time ids)."""
    cfg = _unet(obj).config
    return int(cfg.projection_class_embeddings_input_dim) - TIME_IDS * int(cfg.addition_time_embed_dim)


def text_encoder_names(pipe) -> list[str]:
    """The pipeline's text encoders by attribute name: ['text_encoder'], or on SDXL both."""
    return [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]


def text_encoders(pipe) -> list[tuple[object, torch.nn.Module]]:
    """(tokenizer, text encoder) pairs in the order the pipeline concatenates their outputs."""
    return [(getattr(pipe, n.replace("text_encoder", "tokenizer")), getattr(pipe, n)) for n in text_encoder_names(pipe)]


def stack_ids(per_encoder: Sequence[torch.Tensor]) -> torch.Tensor:
    """One id tensor per text encoder as one tensor: (N, L) where there is one encoder, else
    (N, E, L) (SDXL's two tokenizers pad differently). Rows index like prompts either way."""
    return per_encoder[0] if len(per_encoder) == 1 else torch.stack(list(per_encoder), dim=1)


def first_ids(ids: torch.Tensor) -> torch.Tensor:
    """The first tokenizer's ids (N, L) of ids as :func:`stack_ids` makes them."""
    return ids if ids.ndim == 2 else ids[:, 0]


def token_ids(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Padded ids of ``prompts`` for every text encoder, as :func:`stack_ids` makes them."""
    from erase.concepts import tokenize

    return stack_ids([tokenize(tok, list(prompts)) for tok, _ in text_encoders(pipe)])


def time_ids(pipe) -> torch.Tensor:
    """SDXL's added time ids at the pipeline's default resolution, no crop: (h, w, 0, 0, h, w)."""
    size = int(_unet(pipe).config.sample_size) * int(pipe.vae_scale_factor)
    return torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32)


def _pack(pipe, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    width = tokens.shape[-1]
    extra = torch.zeros(tokens.shape[0], 1, width, dtype=tokens.dtype, device=tokens.device)
    need = pooled.shape[-1] + TIME_IDS
    if need > width:
        raise EraseError(
            f"this SDXL model's pooled embedding ({pooled.shape[-1]}) and time ids do not fit its {width}-wide context; "
            "only base SDXL-shaped models are supported"
        )
    extra[:, 0, : pooled.shape[-1]] = pooled.to(tokens.dtype)
    extra[:, 0, pooled.shape[-1] : need] = time_ids(pipe).to(tokens.device, tokens.dtype)
    return torch.cat([tokens, extra], dim=1)


def encode(pipe, prompts: Sequence[str] | None = None, *, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's text conditioning (fp32; packed on SDXL), keeping the graph (wrap in no_grad
    where it is not needed). Give ``prompts``, or ``ids``: (N, E, L) with one row per text encoder
    (:func:`token_ids`), or (N, L) for all of them."""
    pairs = text_encoders(pipe)
    if ids is None:
        ids = token_ids(pipe, prompts)
    ids = list(ids.unbind(1)) if ids.ndim == 3 else [ids] * len(pairs)
    if not is_sdxl(pipe):
        te = pairs[0][1]
        return te(ids[0].to(te.device))[0].float()
    hidden, pooled = [], None
    for (_, te), chunk in zip(pairs, ids):
        out = te(chunk.to(te.device), output_hidden_states=True)
        if out[0].ndim == 2:  # the encoder with a projection gives the pooled embedding
            pooled = out[0].float()
        hidden.append(out.hidden_states[-2].float())
    if pooled is None:
        raise EraseError("this SDXL pipeline has no text encoder with a projection (no pooled text embedding)")
    return _pack(pipe, torch.cat(hidden, dim=-1), pooled)


def token_states(obj, emb: torch.Tensor) -> torch.Tensor:
    """The per-token part of a text conditioning (drops SDXL's packed row)."""
    return emb[:, :-1] if is_sdxl(obj) else emb


def unet_inputs(unet, emb: torch.Tensor) -> dict:
    """Keyword arguments for ``unet(x_t, t, **unet_inputs(unet, emb))`` from one conditioning tensor."""
    if not is_sdxl(unet):
        return {"encoder_hidden_states": emb}
    width = pooled_width(unet)
    extra = emb[:, -1]
    return {
        "encoder_hidden_states": emb[:, :-1],
        "added_cond_kwargs": {"text_embeds": extra[:, :width], "time_ids": extra[:, width : width + TIME_IDS]},
    }


@torch.no_grad()
def unconditional(pipe, n: int = 1) -> torch.Tensor:
    """The conditioning classifier-free guidance uses without a negative prompt, (n, L, D): the
    empty prompt's encoding, or zeros on SDXL models that zero it (``force_zeros_for_empty_prompt``)."""
    from erase.data import encode_prompts

    emb = encode_prompts(pipe, [""] * n)[0]
    if is_sdxl(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        tokens = torch.zeros_like(token_states(pipe, emb))
        return _pack(pipe, tokens, torch.zeros(n, pooled_width(pipe), device=emb.device))
    return emb


def pipeline_inputs(pipe, emb: torch.Tensor, negative: torch.Tensor | None = None) -> dict:
    """Keyword arguments for ``pipe(...)`` that condition it on ``emb`` (one conditioning per image)
    instead of prompts; ``negative`` defaults to :func:`unconditional`."""
    dtype = next(pipe.text_encoder.parameters()).dtype if pipe.text_encoder is not None else pipe.unet.dtype
    if negative is None:
        negative = unconditional(pipe, len(emb))

    def split(x):
        x = x.to(pipe.device, dtype)
        if not is_sdxl(pipe):
            return x, None
        return token_states(pipe, x), x[:, -1, : pooled_width(pipe)]

    (pos, pos_pooled), (neg, neg_pooled) = split(emb), split(negative)
    kw = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
    if pos_pooled is not None:
        kw.update(pooled_prompt_embeds=pos_pooled, negative_pooled_prompt_embeds=neg_pooled)
    return kw
