"""The concepts of the bundled world and the prompts that name them.

Three kinds of concept: a shape (the object), a colour and a drawing style. Every image shows
one object with one value of each kind; a caption names them through one of a few templates.
"""

from __future__ import annotations

import functools
import itertools
import random

from erase.errors import EraseError

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
STYLES = ("solid", "striped", "outlined")
KINDS = {"shape": SHAPES, "colour": COLOURS, "style": STYLES}

# "{a}" is the article that agrees with the next word.
TEMPLATES = (
    "{a} {colour} {style} {shape}",
    "a drawing of {a} {colour} {style} {shape}",
    "a picture of {a} {style} {colour} {shape}",
    "a photo of {a} {colour} {style} {shape}",
    "an image of {a} {colour} {shape} , {style}",
    "{colour} {style} {shape}",
)

# Words the tokenizer knows besides the concepts (prompts people and the engine write).
EXTRA_WORDS = (
    "a", "an", "the", "of", "drawing", "picture", "photo", "image", "painting", "sketch",
    "with", "in", "on", "and", "style", "object", "shape", "colour", "color", "thing",
    "background", "white", "light", "plain", "simple", "one", "small", "big", "large", ",", ".",
)


def all_concepts() -> tuple[str, ...]:
    return SHAPES + COLOURS + STYLES


def concept_kind(name: str) -> str:
    """The kind ("shape", "colour" or "style") of a concept; EraseError if the world lacks it."""
    key = str(name).strip().lower()
    for kind, values in KINDS.items():
        if key in values:
            return kind
    known = "; ".join(f"{k}s: {', '.join(v)}" for k, v in KINDS.items())
    raise EraseError(f"the toy world has no concept {name!r}; known {known}")


def _with_articles(text: str) -> str:
    """Replace each "{a}" by the article that agrees with the next word."""
    words = text.split()
    for i, w in enumerate(words):
        if w == "{a}":
            nxt = words[i + 1] if i + 1 < len(words) else ""
            words[i] = "an" if nxt[:1] in "aeiou" else "a"
    return " ".join(words)


def caption(shape: str, colour: str, style: str, template: int = 0) -> str:
    """One caption for an image, from TEMPLATES[template]."""
    t = TEMPLATES[template % len(TEMPLATES)]
    return _with_articles(t.replace("{a}", " {a} ").format(a="{a}", colour=colour, style=style, shape=shape))


# Pieces of the freer captions people write (every word is in the tokenizer's vocabulary).
_PREFIXES = ("", "", "a drawing of", "a picture of", "a photo of", "an image of", "a painting of", "a sketch of", "one")
_SIZES = ("", "", "", "small", "big", "large", "simple", "plain")
_NOUNS = ("object", "shape", "thing")
_SUFFIXES = ("", "", "", "on a white background", "on a light background", "in {style} style", ", {style}")


def varied_captions(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` seeded captions beyond the training templates: other prefixes and word orders, sizes,
    attributes left out, a noun for a missing shape. Used to edit and probe concepts in contexts
    other than the six templates the model was trained on."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shape, colour, style = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(STYLES)
        has_shape, has_colour = rng.random() < 0.8, rng.random() < 0.8
        suffix = rng.choice(_SUFFIXES)
        has_style = rng.random() < 0.7 and "{style}" not in suffix
        words = [w for w, keep in ((colour, has_colour), (style, has_style)) if keep]
        rng.shuffle(words)
        size = rng.choice(_SIZES)
        noun = shape if has_shape else rng.choice(_NOUNS)
        prefix = rng.choice(_PREFIXES)
        article = "{a}" if prefix != "one" else ""
        text = " ".join([prefix, article, size, *words, noun, suffix.format(style=style)])
        out.append(_with_articles(text))
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=1)
def context_prompts() -> tuple[str, ...]:
    """Every caption of every combination in every training template, then the varied ones
    (built once per process)."""
    full = [caption(*t, template=i) for t in combinations() for i in range(len(TEMPLATES))]
    return tuple(dict.fromkeys(full + varied_captions()))


def combinations() -> list[tuple[str, str, str]]:
    """Every (shape, colour, style) triple, in a fixed order."""
    return list(itertools.product(SHAPES, COLOURS, STYLES))


def all_prompts() -> list[str]:
    """One prompt (the first template) per shape x colour x style combination."""
    return [caption(s, c, st) for s, c, st in combinations()]


def _triples_with(concept: str, naming: bool) -> list[tuple[str, str, str]]:
    k = list(KINDS).index(concept_kind(concept))  # position in (shape, colour, style)
    return [t for t in combinations() if (t[k] == concept.strip().lower()) == naming]


def prompts_for(concept: str, n: int | None = None) -> list[str]:
    """Prompts that name the concept (first template), every combination that contains it;
    with n, the first n of them cycling through the templates."""
    triples = _triples_with(concept, naming=True)
    if n is None:
        return [caption(*t) for t in triples]
    return [caption(*triples[i % len(triples)], template=i // len(triples)) for i in range(n)]


def retain_prompts(concept: str) -> list[str]:
    """Prompts (first template) for every combination that does not contain the concept."""
    return [caption(*t) for t in _triples_with(concept, naming=False)]


def labels_of(shape: str, colour: str, style: str) -> tuple[int, int, int]:
    return SHAPES.index(shape), COLOURS.index(colour), STYLES.index(style)
