"""UnlearnDiffAtk-style discrete prompt attack (Zhang et al., "To Generate or Not? Safety-Driven
Unlearned Diffusion Models Are Still Easy to Generate Unsafe Images ... For Now", ECCV 2024).

``k`` adversarial tokens are put in front of each prompt with the concept's word removed
(the reference's ``prefix_k``). Their continuous embeddings are optimised (Adam, lr 0.01,
weight decay 0.1: the reference's) so that the *erased* UNet's noise prediction for the
concept's images, ε_erased(x_t | adversarial prompt), matches the noise (MSE, the reference's
``l2``). Each step projects the embeddings to the nearest vocabulary tokens (cosine similarity
with the input-embedding table), runs the model with the projected tokens, and applies that
gradient to the continuous embeddings (the reference's straight-through projection). The found
prompt is made of real tokens: generation uses the token ids, nothing continuous.

Departures from the reference (which attacks one prompt/image pair at a time, for 40
iterations at each of 50 fixed timesteps, and stops when a classifier says the concept is back):
- one prefix for all the concept's prompts and images (universal), trained at random timesteps
  in batches, so that one found prefix is scored on every scoring prompt;
- no classifier in the loop: every ``eval_every`` steps the projected prefix is scored by the
  same loss on a fixed held-out batch (fixed noise and timesteps) and the best one is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from erase.attacks import Attacked, AttackConfig, register
from erase.conditioning import encode, text_encoders, unet_inputs
from erase.errors import EraseError
from erase.methods import check_nonnegative, check_positive, option


@dataclass
class PromptAttackConfig(AttackConfig):
    k: int = option(5, "adversarial tokens put in front of the prompt (reference: 5, prefix)")
    steps: int = option(400, "optimisation steps (the reference: 40 iterations at each sampled timestep)")
    lr: float = option(1e-2, "Adam learning rate of the continuous embeddings (reference: 0.01)")
    weight_decay: float = option(0.1, "Adam weight decay (reference: 0.1)")
    eval_every: int = option(10, "steps between scoring the projected prefix on the held-out batch (best kept)")
    eval_items: int = option(16, "held-out (image, noise, timestep) items the projected prefix is scored on")
    exclude_concept: bool = option(False, "forbid the concept's own tokens in the found prompt (the reference allows them)")

    def validate(self) -> None:
        super().validate()
        check_positive(self, "k", "steps", "eval_every", "eval_items")
        check_positive(self, "lr", integer=False)
        check_nonnegative(self, "weight_decay")


def candidate_ids(pipe, concept: str, exclude_concept: bool) -> torch.Tensor:
    """Token ids the found prompt may use: every id but the special ones (and the concept's)."""
    from erase.concepts import concept_token_ids

    tok = pipe.tokenizer
    vocab = min(te.get_input_embeddings().weight.shape[0] for _, te in text_encoders(pipe))
    banned = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) if i is not None}
    if exclude_concept:
        banned |= set(concept_token_ids(tok, concept))
    keep = [i for i in range(min(vocab, len(tok))) if i not in banned]
    try:  # the toy world's sub-word pieces all carry the unknown token's embedding
        from erase.models import is_toyworld
        from erase.toyworld.tokenizer import first_piece_id

        if is_toyworld(pipe):
            keep = [i for i in keep if i < first_piece_id()]
    except ImportError:
        pass
    return torch.tensor(keep)


def prefixed_ids(tokenizer, prompts, prefix_ids: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """Padded ids of each prompt with ``prefix_ids`` inserted after BOS; slots = their positions."""
    from erase.concepts import tokenize

    k = len(prefix_ids)
    base = tokenize(tokenizer, list(prompts))
    L = base.shape[1]
    out = torch.cat([base[:, :1], prefix_ids.view(1, -1).expand(len(base), -1), base[:, 1:]], dim=1)[:, :L]
    eos = tokenizer.eos_token_id
    for row in out:
        if eos not in row[k + 1 :].tolist():
            raise EraseError(f"a prompt is too long for {k} adversarial tokens in a {L}-token context: lower k")
    return out, [list(range(1, k + 1))] * len(out)


def prefixed_for(pipe, prompts, prefix_ids: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """:func:`prefixed_ids` for each of ``pipe``'s tokenizers: (N, L) ids, or (N, E, L) on SDXL."""
    from erase.inversion import per_tokenizer

    return per_tokenizer(pipe, lambda tok: prefixed_ids(tok, prompts, prefix_ids), "the prefix")


def run(ctx, cfg: PromptAttackConfig) -> Attacked:
    from erase.concepts import anchor_prompt
    from erase.data import add_noise, diffusion_target
    from erase.inversion import embedding_table, encode_with_vectors

    pipe, concept, dev = ctx.pipe, ctx.concept, ctx.device
    base_prompts = [anchor_prompt(p, concept, None) for p in ctx.prompts]
    table = embedding_table(pipe).to(pipe.text_encoder.device)
    cands = candidate_ids(pipe, concept, cfg.exclude_concept).to(table.device)
    cand_unit = F.normalize(table[cands], dim=-1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = cands[torch.randint(0, len(cands), (cfg.k,), generator=gen).to(cands.device)]
    adv = table[start].clone().requires_grad_(True)  # the reference starts from random vocabulary tokens
    opt = torch.optim.Adam([adv], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = ctx.scheduler()

    def project(v: torch.Tensor) -> torch.Tensor:
        return cands[(F.normalize(v.detach(), dim=-1) @ cand_unit.T).argmax(-1)]

    def loss_of(proj_ids, vectors, idx, x_t, noise, t, x0):
        ids, slots = prefixed_for(pipe, [base_prompts[i] for i in idx.tolist()], proj_ids.cpu())
        emb = encode_with_vectors(pipe, ids, slots, vectors)
        pred = pipe.unet(x_t, t, **unet_inputs(pipe.unet, emb.to(pipe.unet.dtype))).sample
        return F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())

    # the fixed held-out batch the projected prefix is scored on
    hold_gen = torch.Generator().manual_seed(cfg.seed + 1)
    hold_idx = torch.randint(0, len(base_prompts), (cfg.eval_items,), generator=hold_gen)
    hx0 = ctx.latents[hold_idx].to(dev)
    hold = (hold_idx, *add_noise(scheduler, hx0, hold_gen), hx0)

    modules = [pipe.unet] + [te for _, te in text_encoders(pipe)]
    flags = [{n: p.requires_grad for n, p in m.named_parameters()} for m in modules]
    best = (float("inf"), start.clone(), -1)
    losses = []
    try:
        for m in modules:
            m.requires_grad_(False)
        for step in range(cfg.steps):
            idx = torch.randint(0, len(base_prompts), (cfg.batch_size,), generator=gen)
            x0 = ctx.latents[idx].to(dev)
            x_t, noise, t = add_noise(scheduler, x0, gen)
            proj_ids = project(adv)
            proj = table[proj_ids].clone().requires_grad_(True)
            loss = loss_of(proj_ids, proj, idx, x_t, noise, t, x0)
            if not torch.isfinite(loss):
                raise EraseError(f"prompt-attack loss became {loss.item()} at step {step}: lower lr")
            (grad,) = torch.autograd.grad(loss, [proj])
            opt.zero_grad(set_to_none=True)
            adv.grad = grad
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                ids_now = project(adv)
                with torch.no_grad():
                    held = float(loss_of(ids_now, table[ids_now], *hold[:4], hold[4]))
                if held < best[0]:
                    best = (held, ids_now.clone(), step + 1)
            ctx.report(step + 1, cfg.steps, {"phase": "attack: prompt", "loss": losses[-1]})
    finally:
        for m, f in zip(modules, flags):
            for n, p in m.named_parameters():
                p.requires_grad_(f[n])
                p.grad = None
    found = best[1].cpu()
    words = pipe.tokenizer.convert_ids_to_tokens(found.tolist())
    prefix_text = " ".join(w.replace("</w>", "") for w in words)
    eval_base = [anchor_prompt(p, concept, None) for p in ctx.eval_prompts]
    ids, _ = prefixed_for(pipe, eval_base, found)
    with torch.no_grad():
        emb = torch.cat([encode(pipe, ids=chunk).cpu() for chunk in ids.split(64)])
    shown = [f"{prefix_text} {p}".strip() for p in eval_base]
    return Attacked(prompts=shown, prompt_embeds=emb, learned={"token_ids": found.tolist(), "prefix": prefix_text},
                    stats={"held_out_loss": best[0], "best_step": best[2], "loss_last50": sum(losses[-50:]) / len(losses[-50:])})


register(
    "prompt", PromptAttackConfig, run, "UnlearnDiffAtk-style: k discrete prefix tokens optimised against the erased model",
    toyworld={"n_images": 64, "generation_steps": 15, "steps": 200, "batch_size": 8},
)
