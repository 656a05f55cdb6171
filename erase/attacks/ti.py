"""Textual-inversion attack (Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image
Generative Models", ICLR 2024).

Learn ``tokens`` new input embeddings from images of the concept with the plain diffusion loss,
against the *erased* UNet (frozen), in place of the concept's word in the prompts the images
were made from; then generate the scoring prompts with the concept's word replaced by them.
The learning is erase.inversion.learn_vectors (the same as FMN's TI stage: AdamW, norm pulled
towards the vocabulary's); here it starts from random vectors of the vocabulary's norm (or a
word's embedding: ``init``), never from the concept's own embedding, so that a recovery cannot
come from the erased word itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.attacks import Attacked, AttackConfig, register
from erase.errors import EraseError
from erase.methods import check_nonnegative, check_positive, option


@dataclass
class TIAttackConfig(AttackConfig):
    tokens: int = option(1, "new token embeddings learned in place of the concept's word")
    steps: int = option(1000, "optimisation steps")
    lr: float = option(5e-3, "learning rate of the embeddings (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay on the embeddings")
    norm_decay: float | None = option(None, "pull of the vectors' norm towards the vocabulary's per step, in [0, 1] (null: erase.inversion's min(1, 100 lr); 0: free)")
    init: str = option("random", "starting vectors: 'random' (the vocabulary's mean norm) or a word whose embedding starts every token")

    def validate(self) -> None:
        super().validate()
        check_positive(self, "tokens", "steps")
        check_positive(self, "lr", integer=False)
        check_nonnegative(self, "weight_decay")
        if self.norm_decay is not None and not 0 <= self.norm_decay <= 1:
            raise EraseError(f"norm_decay must be in [0, 1] or null, got {self.norm_decay}")
        if not isinstance(self.init, str) or not self.init.strip():
            raise EraseError(f"init must be 'random' or a word, got {self.init!r}")


def initial_vectors(pipe, cfg: TIAttackConfig) -> torch.Tensor:
    from erase.concepts import concept_token_ids
    from erase.inversion import embedding_table

    table = embedding_table(pipe)
    if cfg.init.strip().lower() == "random":
        gen = torch.Generator().manual_seed(cfg.seed)
        rand = torch.randn(cfg.tokens, table.shape[1], generator=gen)
        return rand / rand.norm(dim=-1, keepdim=True) * table.norm(dim=-1).mean()
    ids = concept_token_ids(pipe.tokenizer, cfg.init)
    return table[ids].mean(0, keepdim=True).repeat(cfg.tokens, 1)


def run(ctx, cfg: TIAttackConfig) -> Attacked:
    from erase.inversion import encode_with_vectors, learn_vectors, slotted

    pipe, concept = ctx.pipe, ctx.concept
    losses = []

    def progress(done, total, info):
        losses.append(info.get("loss"))
        ctx.report(done, total, {**info, "phase": "attack: textual inversion"})

    vectors = learn_vectors(pipe, concept, ctx.latents, ctx.prompts, ctx.scheduler(), n=cfg.tokens, steps=cfg.steps,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, seed=cfg.seed,
                            progress=progress, init=initial_vectors(pipe, cfg), norm_decay=cfg.norm_decay)
    ids, slots = slotted(pipe, ctx.eval_prompts, concept, cfg.tokens)
    with torch.no_grad():
        emb = encode_with_vectors(pipe, ids, slots, vectors.to(ctx.device)).cpu()
    names = " ".join(f"<ti-{i}>" for i in range(cfg.tokens))
    from erase.concepts import anchor_prompt

    shown = [anchor_prompt(p, concept, names) for p in ctx.eval_prompts]
    window = [x for x in losses[-50:] if x is not None]
    return Attacked(prompts=shown, prompt_embeds=emb, learned={"vectors": vectors},
                    stats={"loss_last50": sum(window) / max(len(window), 1), "vector_norms": [round(float(v), 4) for v in vectors.norm(dim=-1)]})


register(
    "ti", TIAttackConfig, run, "textual inversion: new token embeddings learned from the concept's images against the erased model",
    # Toy world (bundled model; measured, see docs/attacks.md): 64 base-model images, 15-step generation.
    toyworld={"n_images": 64, "generation_steps": 15, "steps": 150, "lr": 5e-3, "batch_size": 8},
)
