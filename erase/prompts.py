"""Which prompts a method trains and probes with, per model.

For any Stable Diffusion model: concept prompts from templates ("a photo of {}", ...), the
concept removed for the misaligned condition c′, and a fixed list of unrelated prompts to keep.
For the bundled toy world: its own captions, another concept of the same kind as c′, and the
world's prompts that name none of the erased concepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from erase.concepts import CONCEPT_TEMPLATES, GENERIC_RETAIN_PROMPTS, concept_prompts


@dataclass
class PromptSource:
    templates: Sequence[str] = CONCEPT_TEMPLATES
    retain: Sequence[str] = GENERIC_RETAIN_PROMPTS

    def concept_prompts(self, concept: str) -> list[str]:
        return concept_prompts(concept, self.templates)

    def retain_prompts(self, concepts: Sequence[str]) -> list[str]:
        low = [c.lower() for c in concepts]
        return [p for p in self.retain if not any(c in p.lower() for c in low)]

    def anchor(self, concept: str, erased: Sequence[str]) -> str:
        """Text that replaces the concept in c′ ('' removes it)."""
        return ""


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
