import pytest

from erase.concepts import anchor_prompt, check_concept, concept_positions, concept_token_ids
from erase.errors import ConceptNotFoundError


def test_multi_token_concept_positions(tiny_pipe):
    tok = tiny_pipe.tokenizer
    ids, pos = concept_positions(tok, "a painting by Van Gogh", "Van Gogh")
    assert len(pos) == len(concept_token_ids(tok, "van gogh")) >= 2
    assert pos == list(range(pos[0], pos[0] + len(pos)))
    assert tok.decode(ids[pos]).replace(" ", "") == "vangogh"
    _, twice = concept_positions(tok, "circle and circle", "circle")
    assert len(twice) == 2


@pytest.mark.parametrize(
    "prompt, concept, message",
    [
        ("a photo of a cat", "dog", "not found in prompt"),
        ("a photo of a cat", "", "non-empty"),
        ("a photo of a cat", "   ", "non-empty"),
        ("a photo of §§", "§§", "not in the tokenizer's vocabulary"),
        ("a photo of a cat " * 8 + "dog", "dog", "cut off"),
    ],
)
def test_bad_concepts(tiny_pipe, prompt, concept, message):
    with pytest.raises(ConceptNotFoundError, match=message):
        concept_positions(tiny_pipe.tokenizer, prompt, concept)


def test_check_concept_and_anchor(tiny_pipe):
    check_concept(tiny_pipe.tokenizer, "circle")
    with pytest.raises(ConceptNotFoundError):
        check_concept(tiny_pipe.tokenizer, "§")
    assert anchor_prompt("a painting by Van Gogh", "van gogh") == "a painting by"
    assert anchor_prompt("a red circle", "circle", "square") == "a red square"
