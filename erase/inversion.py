"""Textual inversion without touching the tokenizer: learn a few input vectors for a concept.

Forget-Me-Not's optional first stage learns new tokens (``<s1>..<s4>``) for the concept from its
images; the attention stage then steers the UNet away from them. Here no token is added: each
concept occurrence in a prompt's ids is replaced by ``n`` slot positions, and a forward hook on
the text encoder's token-embedding layer writes the learned vectors into those positions while
it is installed. The tokenizer, the embedding table and every text-encoder weight stay as they
were, so an erasure still changes UNet tensors only.

Training follows the reference (cloneofsimo's PTI inversion): diffusion MSE on the concept's
latents, only the vectors train (AdamW, weight decay 0.1), and after each step their norms are
pulled towards the vocabulary's typical norm (the reference's 0.4 for SD's CLIP) by
lambda = min(1, 100 * lr).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from erase.concepts import concept_positions, concept_token_ids
from erase.conditioning import unet_inputs
from erase.errors import EraseError

__all__ = [
    "slot_ids", "slotted_prompts", "slotted", "injected", "encode_with_vectors", "init_vectors", "learn_vectors",
    "embedding_table", "per_tokenizer",
]


def slot_ids(tokenizer, prompt: str, concept: str, n: int) -> tuple[torch.Tensor, list[int]]:
    """Padded ids of ``prompt`` with every occurrence of ``concept`` replaced by ``n`` slot positions
    (they hold the concept's first token id; the hook overwrites their embeddings)."""
    ids, pos = concept_positions(tokenizer, prompt, concept)
    seq, span = ids.tolist(), len(concept_token_ids(tokenizer, concept))
    fill = seq[pos[0]]
    starts = pos[::span]
    out, slots, i = [], [], 0
    for start in starts:
        out += seq[i:start]
        slots += list(range(len(out), len(out) + n))
        out += [fill] * n
        i = start + span
    out += seq[i:]
    out = out[: tokenizer.model_max_length]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out += [pad] * (tokenizer.model_max_length - len(out))  # fewer slots than concept tokens: pad back to full length
    if max(slots) >= len(out) or tokenizer.eos_token_id not in out[max(slots) + 1 :]:
        raise EraseError(f"prompt {prompt!r} is too long for {n} learned tokens per concept occurrence")
    return torch.tensor(out), slots


class _Hook:
    def __init__(self, vectors: torch.Tensor, slots: Sequence[Sequence[int]]):
        self.vectors, self.slots = vectors, [list(s) for s in slots]

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(self.slots):
            raise RuntimeError(f"learned-token hook has slots for {len(self.slots)} prompts, the batch has {output.shape[0]}")
        out = output.clone()
        n = self.vectors.shape[0]
        for b, slots in enumerate(self.slots):
            for j, pos in enumerate(slots):
                out[b, pos] = self.vectors[j % n].to(out.dtype)
        return out


def embedding_table(pipe) -> torch.Tensor:
    """The vocabulary's input embeddings (V, D), detached fp32 on the CPU. On SDXL each row is the
    two text encoders' embeddings of that token side by side (D = 768 + 1280 on the real model),
    and a learned vector is split the same way, one part per encoder."""
    from erase.conditioning import text_encoders

    tables = [te.get_input_embeddings().weight.detach().float().cpu() for _, te in text_encoders(pipe)]
    return tables[0] if len(tables) == 1 else torch.cat(tables, dim=1)


def per_tokenizer(pipe, make, what: str) -> tuple[torch.Tensor, list[list[int]]]:
    """``make(tokenizer) -> (ids (N, L), slots)`` for each of ``pipe``'s tokenizers, as (ids, slots):
    ids as erase.conditioning.stack_ids makes them; the slots must be the same for every tokenizer."""
    from erase.conditioning import stack_ids, text_encoders

    made = [make(tok) for tok, _ in text_encoders(pipe)]
    if any(m[1] != made[0][1] for m in made[1:]):
        raise EraseError(f"the text encoders' tokenizers place {what} differently; learned tokens need the same positions")
    return stack_ids([m[0] for m in made]), made[0][1]


def slotted(pipe, prompts: Sequence[str], concept: str, n: int) -> tuple[torch.Tensor, list[list[int]]]:
    """(ids, slots) of :func:`slotted_prompts` for ``pipe``'s text encoders: ids (N, L), or
    (N, E, L) with one row per tokenizer where there are E of them (SDXL: they pad differently)."""
    return per_tokenizer(pipe, lambda tok: slotted_prompts(tok, prompts, concept, n), repr(concept))


@contextmanager
def injected(text_encoder, vectors: torch.Tensor, slots: Sequence[Sequence[int]]):
    """While inside, the text encoder embeds ``vectors`` at each prompt's slot positions."""
    handle = text_encoder.get_input_embeddings().register_forward_hook(_Hook(vectors, slots))
    try:
        yield
    finally:
        handle.remove()


def encode_with_vectors(pipe, ids: torch.Tensor, slots: Sequence[Sequence[int]], vectors: torch.Tensor) -> torch.Tensor:
    """The UNet's conditioning (fp32; packed on SDXL) for padded ``ids`` (as :func:`slotted` makes
    them) with ``vectors`` at the slots; keeps the graph. On SDXL each encoder gets its part of
    every vector (see :func:`embedding_table`)."""
    from erase.conditioning import encode, text_encoders

    encoders = [te for _, te in text_encoders(pipe)]
    parts = vectors.split([te.get_input_embeddings().weight.shape[1] for te in encoders], dim=-1)
    with ExitStack() as stack:
        for te, part in zip(encoders, parts):
            stack.enter_context(injected(te, part, slots))
        return encode(pipe, ids=ids)


@torch.no_grad()
def init_vectors(pipe, concept: str, n: int, seed: int) -> torch.Tensor:
    """The concept's own token embeddings first, then random vectors of the vocabulary's mean norm
    (the reference initialises from the concept's words and ``<rand>``)."""
    table = embedding_table(pipe)
    ids = concept_token_ids(pipe.tokenizer, concept)
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(n, table.shape[1], generator=gen)
    rand = rand / rand.norm(dim=-1, keepdim=True) * table.norm(dim=-1).mean()
    return torch.stack([table[ids[i]] if i < len(ids) else rand[i] for i in range(n)])


def learn_vectors(
    pipe, concept: str, latents: torch.Tensor, prompts: Sequence[str], scheduler, *,
    n: int = 4, steps: int = 500, lr: float = 1e-3, weight_decay: float = 0.1, batch_size: int = 1,
    seed: int = 0, autocast=None, progress=None, init: torch.Tensor | None = None, norm_decay: float | None = None,
) -> torch.Tensor:
    """Learn ``n`` input vectors that make the frozen model reproduce ``latents`` from ``prompts``
    (the concept replaced by the vectors). Returns them (n, D) on the CPU; the model is unchanged.
    ``init`` (n, D) starts from given vectors instead of :func:`init_vectors` (an attack must not
    start from the concept's own embedding). ``norm_decay``: the pull towards the vocabulary's
    norm per step (None: the reference's min(1, 100 * lr); 0: the norm is free)."""
    from erase.data import add_noise, diffusion_target

    if n < 1 or steps < 1:
        raise EraseError(f"textual inversion needs at least one token and one step, got {n} tokens, {steps} steps")
    device = next(pipe.unet.parameters()).device
    from erase.conditioning import text_encoders

    ids, slots = slotted(pipe, prompts, concept, n)
    table = embedding_table(pipe)
    if init is not None and tuple(init.shape) != (n, table.shape[1]):
        raise EraseError(f"initial vectors have shape {tuple(init.shape)}, expected ({n}, {table.shape[1]}): the embedding width")
    start = init_vectors(pipe, concept, n, seed) if init is None else init.detach().float().cpu()
    vectors = start.clone().to(device).requires_grad_(True)
    target_norm = table.norm(dim=-1).mean().item()
    opt = torch.optim.AdamW([vectors], lr=lr, weight_decay=weight_decay)
    modules = [pipe.unet] + [te for _, te in text_encoders(pipe)]
    flags = [{n_: p.requires_grad for n_, p in m.named_parameters()} for m in modules]
    gen = torch.Generator().manual_seed(seed)
    decay = min(1.0, 100 * lr) if norm_decay is None else float(norm_decay)
    try:
        for m in modules:
            m.requires_grad_(False)
        for step in range(steps):
            idx = torch.randint(0, len(prompts), (batch_size,), generator=gen)
            x0 = latents[idx].to(device)
            x_t, noise, t = add_noise(scheduler, x0, gen)
            with autocast() if autocast is not None else torch.enable_grad():
                emb = encode_with_vectors(pipe, ids[idx], [slots[i] for i in idx.tolist()], vectors)
                pred = pipe.unet(x_t, t, **unet_inputs(pipe.unet, emb.to(pipe.unet.dtype))).sample
            loss = F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())
            if not torch.isfinite(loss):
                raise EraseError(f"textual inversion loss became {loss.item()} at step {step}: lower its learning rate (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # the reference's norm decay towards the vocabulary's norm
                norm = vectors.norm(dim=-1, keepdim=True)
                vectors.copy_(F.normalize(vectors, dim=-1) * (norm + decay * (target_norm - norm)))
            if progress is not None:
                progress(step + 1, steps, {"phase": "textual inversion", "loss": float(loss.detach())})
    finally:
        for m, f in zip(modules, flags):
            for n_, p in m.named_parameters():
                p.requires_grad_(f[n_])
                p.grad = None
    return vectors.detach().cpu()


def slotted_prompts(tokenizer, prompts: Sequence[str], concept: str, n: int) -> tuple[torch.Tensor, list[list[int]]]:
    """(ids, slots) for many prompts (see :func:`slot_ids`)."""
    made = [slot_ids(tokenizer, p, concept, n) for p in prompts]
    return torch.stack([m[0] for m in made]), [m[1] for m in made]

