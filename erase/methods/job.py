"""What a method gets to work on: the pipeline, the concepts, prompts and training data."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from erase.concepts import anchor_prompt, concept_positions
from erase.data import PromptSet, encode_images, encode_prompts, generate_latents
from erase.distributed import Shard, current
from erase.errors import EraseError
from erase.prompts import PromptSource
from erase.training import ProgressFn


@dataclass
class ForgetSet(PromptSet):
    """Concept items: where each concept sits in its prompt, and the misaligned condition c′."""

    positions: list[list[int]] = field(default_factory=list)
    concept_index: list[int] = field(default_factory=list)
    anchor_prompts: list[str] = field(default_factory=list)
    anchor_embeddings: torch.Tensor | None = None


@dataclass
class ErasureJob:
    pipe: object
    concepts: list[str]
    prompts: PromptSource
    mixed_precision: str = "no"
    progress: ProgressFn | None = None
    images: Mapping[str, Sequence] | None = None  # user images per concept (else data-free)
    shard: Shard = field(default_factory=current)  # data-parallel: this process's share (erase.distributed)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device

    def concept_items(self) -> list[tuple[int, str, list[int]]]:
        """(concept index, prompt, token positions) for every concept prompt; checks them all."""
        items = []
        for ci, concept in enumerate(self.concepts):
            for prompt in self.prompts.concept_prompts(concept):
                _, pos = concept_positions(self.pipe.tokenizer, prompt, concept)
                items.append((ci, prompt, pos))
        return items

    @torch.no_grad()
    def forget_set(
        self, n_per_concept: int, *, steps: int, guidance_scale: float, seed: int,
        anchors: Callable[[list[str], list[int]], list[str]] | None = None,
    ) -> ForgetSet:
        """Latents of each concept: the user's images, or ``n_per_concept`` generated ones.

        ``anchors(prompts, concept_index) -> c′ prompts`` chooses the misaligned conditions
        (default: each concept replaced by ``self.prompts.anchor``, the model's default)."""
        items = self.concept_items()
        latents, prompts, positions, index = [], [], [], []
        for ci, concept in enumerate(self.concepts):
            mine = [(p, pos) for c, p, pos in items if c == ci]
            given = (self.images or {}).get(concept)
            if given:
                lat = encode_images(self.pipe, given, seed=seed + ci)
                chosen = [mine[i % len(mine)][0] for i in range(len(lat))]
            else:
                lat, chosen = generate_latents(
                    self.pipe, [p for p, _ in mine], n_per_concept, steps=steps, guidance_scale=guidance_scale,
                    seed=seed * 1009 + ci, progress=self._sub_progress(f"generate '{concept}'"), shard=self.shard,
                )
            pos_of = dict(mine)
            latents.append(lat.cpu())
            prompts += chosen
            positions += [pos_of[p] for p in chosen]
            index += [ci] * len(chosen)
        anchors = (anchors or self.default_anchors)(prompts, index)
        emb, ids = encode_prompts(self.pipe, prompts)
        anchor_emb, _ = encode_prompts(self.pipe, anchors)
        return ForgetSet(
            latents=torch.cat(latents), prompts=prompts, embeddings=emb.cpu(), token_ids=ids,
            positions=positions, concept_index=index, anchor_prompts=anchors, anchor_embeddings=anchor_emb.cpu(),
        )

    def default_anchors(self, prompts: Sequence[str], index: Sequence[int]) -> list[str]:
        """c′ per item: its concept replaced by the model's default anchor (toy world: the next
        same-kind concept; other models: '' drops it)."""
        return [
            anchor_prompt(p, self.concepts[ci], self.prompts.anchor(self.concepts[ci], self.concepts))
            for p, ci in zip(prompts, index)
        ]

    @torch.no_grad()
    def retain_set(self, n: int, *, steps: int, guidance_scale: float, seed: int) -> PromptSet:
        prompts = self.prompts.retain_prompts(self.concepts)
        if not prompts:
            raise EraseError("no retain prompts left: every retain prompt names an erased concept")
        lat, chosen = generate_latents(
            self.pipe, prompts, n, steps=steps, guidance_scale=guidance_scale, seed=seed * 1009 + 7919,
            progress=self._sub_progress("generate retain set"), shard=self.shard,
        )
        emb, ids = encode_prompts(self.pipe, chosen)
        return PromptSet(latents=lat.cpu(), prompts=chosen, embeddings=emb.cpu(), token_ids=ids)

    def _sub_progress(self, phase: str) -> ProgressFn | None:
        if self.progress is None:
            return None
        return lambda done, total, info: self.progress(done, total, {**info, "phase": phase})
