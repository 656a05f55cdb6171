"""Concepts as text: where a concept's tokens sit inside a prompt, and the prompts built around it.

    ids, positions = concept_positions(tokenizer, "a painting by Van Gogh", "Van Gogh")
    # positions == [4, 5]: the token indices (BOS counted) that spell the concept

Positions are found on the padded token sequence the pipeline feeds its text encoder, so they
index the cross-attention key axis directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erase.errors import ConceptNotFoundError, EraseError

# Prompt templates for concept prompts (FMN's "a photo of {}" first), used to generate
# forget data and to probe the erasure.
CONCEPT_TEMPLATES = (
    "a photo of {}",
    "a painting of {}",
    "an image of {}",
    "a picture of {}",
    "{}",
)

# Templates for a style concept (an artist, a look); Forget-Me-Not's reference uses the second.
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a photo in the style of {}",
    "an artwork by {}",
    "a picture in the style of {}",
    "{} style",
)

# Unrelated prompts: the retain set and the "what was kept" half of every comparison.
GENERIC_RETAIN_PROMPTS = (
    "a photo of a dog",
    "a photo of a cat",
    "a red car on a street",
    "a house by a lake",
    "a bowl of fruit on a table",
    "a mountain landscape at sunset",
    "a portrait of a woman",
    "a city skyline at night",
)

__all__ = [
    "CONCEPT_TEMPLATES",
    "GENERIC_RETAIN_PROMPTS",
    "tokenize",
    "concept_token_ids",
    "concept_positions",
    "concept_prompts",
    "anchor_prompt",
    "eos_position",
    "STYLE_TEMPLATES",
    "check_concept",
    "mentions",
]


def tokenize(tokenizer, prompts: Sequence[str] | str) -> torch.Tensor:
    """Token ids exactly as the SD pipeline makes them: padded/truncated to model_max_length."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _specials(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


def concept_token_ids(tokenizer, concept: str) -> list[int]:
    """The token ids that spell ``concept`` (no BOS/EOS). Raises if it is empty or unknown."""
    if not isinstance(concept, str) or not concept.strip():
        raise ConceptNotFoundError(f"concept must be a non-empty string, got {concept!r}")
    ids = tokenizer(concept.strip(), add_special_tokens=False).input_ids
    unk = tokenizer.unk_token_id
    # CLIP's unk token is its EOS token; a real token of the concept is anything else.
    real = [i for i in ids if i not in _specials(tokenizer) and i != unk]
    if not ids:
        raise ConceptNotFoundError(f"concept {concept!r} tokenizes to nothing")
    if not real:
        raise ConceptNotFoundError(f"concept {concept!r} is not in the tokenizer's vocabulary (only unknown tokens)")
    return ids


def _find(seq: list[int], sub: list[int]) -> int:
    for start in range(len(seq) - len(sub) + 1):
        if seq[start : start + len(sub)] == sub:
            return start
    return -1


def concept_positions(tokenizer, prompt: str, concept: str) -> tuple[torch.Tensor, list[int]]:
    """Return (padded ids of ``prompt``, positions of ``concept``'s tokens in them).

    Matching is on token ids, case-insensitively for CLIP tokenizers (they lowercase). Every
    occurrence of the concept in the prompt is returned. Raises ConceptNotFoundError when the
    concept is not in the prompt or was cut off by truncation.
    """
    sub = concept_token_ids(tokenizer, concept)
    ids = tokenize(tokenizer, prompt)[0]
    seq = ids.tolist()
    positions: list[int] = []
    start = 0
    while True:
        found = _find(seq[start:], sub)
        if found < 0:
            break
        positions.extend(range(start + found, start + found + len(sub)))
        start += found + len(sub)
    if not positions:
        full = tokenizer(prompt, add_special_tokens=False).input_ids
        if _find(full, sub) >= 0:
            raise ConceptNotFoundError(
                f"concept {concept!r} is cut off: prompt {prompt!r} is longer than the text encoder's "
                f"{tokenizer.model_max_length} tokens"
            )
        raise ConceptNotFoundError(f"concept {concept!r} not found in prompt {prompt!r}")
    return ids, positions


def concept_prompts(concept: str, templates: Sequence[str] = CONCEPT_TEMPLATES) -> list[str]:
    """Prompts naming the concept, one per template."""
    for t in templates:
        if "{}" not in t:
            raise EraseError(f"prompt template {t!r} has no '{{}}' placeholder for the concept")
    return [t.format(concept) for t in templates]


def anchor_prompt(prompt: str, concept: str, anchor: str | None = None) -> str:
    """c′ for a concept prompt: every whole-word occurrence of the concept (case-insensitive)
    replaced by ``anchor``, or removed when it is None/''. "an image of image" loses only the
    last word; "paint" is not found in "painting"."""
    pattern = _word_pattern(concept)
    if not concept.strip() or pattern.search(prompt) is None:
        raise ConceptNotFoundError(f"concept {concept!r} not found as whole words in prompt {prompt!r}")
    out = pattern.sub(lambda _: anchor or "", prompt)
    return " ".join(out.split())


def eos_position(tokenizer, ids: Sequence[int]) -> int:
    """Index of the first end-of-text token in padded ids: CLIP's pooled (EOS) token."""
    ids = list(ids)
    eos = tokenizer.eos_token_id
    for i, tok in enumerate(ids):
        if tok == eos and i > 0:  # position 0 is BOS (some tokenizers share its id)
            return i
    return len(ids) - 1  # truncated prompt: the last position stands in for it


def _word_pattern(concept: str):
    import re

    words = [re.escape(w) for w in concept.split()]
    # whole words only: "image" is not in "imagery", "paint" is not in "painting"
    return re.compile(r"(?<![\w])" + r"\s+".join(words) + r"(?![\w])", re.IGNORECASE)


def mentions(text: str, concept: str) -> bool:
    """Whether ``text`` names ``concept`` as whole words (case-insensitive)."""
    return bool(concept.strip()) and _word_pattern(concept).search(text) is not None


def check_concept(tokenizer, concept: str) -> None:
    """Raise a clear error if ``concept`` cannot be placed in a prompt for this tokenizer."""
    concept_positions(tokenizer, CONCEPT_TEMPLATES[0].format(concept), concept)
