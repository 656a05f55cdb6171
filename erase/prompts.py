"""Which prompts a method trains and probes with, per model.

For any Stable Diffusion model: concept prompts from templates ("a photo of {}", ...), the
concept removed for the misaligned condition c′, and a fixed list of unrelated prompts to keep.
For the bundled toy world: its own captions, another concept of the same kind as c′, and the
world's prompts that name none of the erased concepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from erase.concepts import CONCEPT_TEMPLATES, GENERIC_RETAIN_PROMPTS, concept_prompts, mentions

# Concepts whose outputs a closed-form edit keeps by default on a real Stable Diffusion model:
# common objects, people, animals, places and art styles (UCE's preserve set is of this kind).
DEFAULT_PRESERVE = (
    "person", "man", "woman", "child", "face", "dog", "cat", "bird", "horse", "fish",
    "car", "bicycle", "airplane", "boat", "train", "house", "building", "city", "street", "bridge",
    "tree", "flower", "forest", "mountain", "river", "lake", "sea", "beach", "sky", "sunset",
    "table", "chair", "book", "cup", "food", "fruit", "clothes", "shoe", "hat", "computer",
    "painting", "photograph", "drawing", "sculpture", "portrait", "landscape", "cartoon", "anime",
    "Claude Monet", "Pablo Picasso", "Rembrandt", "Salvador Dali", "Andy Warhol", "Frida Kahlo",
)


@dataclass
class PromptSource:
    templates: Sequence[str] = CONCEPT_TEMPLATES
    retain: Sequence[str] = GENERIC_RETAIN_PROMPTS

    def concept_prompts(self, concept: str) -> list[str]:
        return concept_prompts(concept, self.templates)

    def retain_prompts(self, concepts: Sequence[str]) -> list[str]:
        return [p for p in self.retain if not any(mentions(p, c) for c in concepts)]

    def anchor(self, concept: str, erased: Sequence[str]) -> str:
        """Text that replaces the concept in c′ ('' removes it)."""
        return ""

    def context_prompts(self, concept: str) -> list[str]:
        """Prompts in which a closed-form edit reads the concept's text embeddings: the concept
        prompts and the bare concept (a causal text encoder embeds a word by what precedes it)."""
        return list(dict.fromkeys([*self.concept_prompts(concept), concept]))

    def default_preserve(self, erased: Sequence[str]) -> list[str]:
        """Concepts kept by default: a list of common ones, less any that names an erased concept."""
        return [c for c in DEFAULT_PRESERVE if not any(mentions(c, e) or mentions(e, c) for e in erased)]

    def preserve_prompts(self, preserve: Sequence[str], erased: Sequence[str]) -> list[str]:
        """Context prompts of the preserved concepts that name no erased concept."""
        out = [p for c in preserve for p in self.context_prompts(c)]
        return [p for p in dict.fromkeys(out) if not any(mentions(p, e) for e in erased)]


class ToyWorldPrompts(PromptSource):
    """Prompts of the bundled concept world (shapes x colours x styles)."""

    def __init__(self, templates: Sequence[str] | None = None):
        super().__init__(templates=templates or CONCEPT_TEMPLATES, retain=())
        self._custom_templates = templates is not None

    def concept_prompts(self, concept: str) -> list[str]:
        from erase import toyworld

        toyworld.concept_kind(concept)  # clear error for concepts the world does not know
        if self._custom_templates:
            return concept_prompts(concept, self.templates)
        return toyworld.prompts_for(concept)

    def retain_prompts(self, concepts: Sequence[str]) -> list[str]:
        from erase import toyworld

        keep = set(toyworld.retain_prompts(concepts[0]))
        for c in concepts[1:]:
            keep &= set(toyworld.retain_prompts(c))
        return sorted(keep)

    def context_prompts(self, concept: str) -> list[str]:
        """Every caption of the world naming the concept: all training templates and freer ones."""
        from erase.toyworld.concepts import context_prompts

        if self._custom_templates:
            return super().context_prompts(concept)
        return [p for p in context_prompts() if mentions(p, concept)]

    def default_preserve(self, erased: Sequence[str]) -> list[str]:
        """Every other concept of the world."""
        from erase.toyworld.concepts import all_concepts

        low = {e.lower() for e in erased}
        return [c for c in all_concepts() if c not in low]

    def anchor(self, concept: str, erased: Sequence[str]) -> str:
        from erase import toyworld

        kind = toyworld.concept_kind(concept)
        options = [c for c in toyworld.KINDS[kind] if c not in erased]
        names = list(toyworld.KINDS[kind])
        # the next same-kind concept that is not being erased: deterministic and spread out
        start = names.index(concept)
        for step in range(1, len(names)):
            cand = names[(start + step) % len(names)]
            if cand in options:
                return cand
        return ""


def prompt_source_for(pipe, templates: Sequence[str] | None = None) -> PromptSource:
    from erase.models import is_toyworld

    if is_toyworld(pipe):
        return ToyWorldPrompts(templates)
    return PromptSource(templates=templates or CONCEPT_TEMPLATES)
