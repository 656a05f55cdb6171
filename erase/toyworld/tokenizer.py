"""A CLIPTokenizer with a tiny vocabulary: one token per known word, unk for anything else.

The files are the ordinary CLIP ones (vocab.json + merges.txt), so
``CLIPTokenizer.from_pretrained(folder)`` loads them. BPE needs every intermediate merge
result (single characters, partial words) in the vocabulary with ids of their own; they come
after the words (ids >= ``first_piece_id()``) and the exported text encoder gives them the unk
token's embedding, so an unknown word encodes to pieces that mean "unknown", while a known
word is exactly one token. ``unknown_words`` tells which words of a text are not known.
"""

from __future__ import annotations

import json
from pathlib import Path

from erase.toyworld.concepts import EXTRA_WORDS, all_concepts

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = 16  # tokens, bos and eos included


def words() -> list[str]:
    return list(dict.fromkeys(list(all_concepts()) + list(EXTRA_WORDS)))


def _symbols(word: str) -> list[str]:
    # CLIP's BPE runs on byte-level symbols; our words are ASCII so bytes == characters.
    return list(word[:-1]) + [word[-1] + "</w>"]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: merge the best-ranked adjacent pair until none applies."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges). Ids: 0 bos, 1 eos (also pad), 2 unk, one id per word, then pieces.

    Merges are added, lowest priority last, until BPE turns every known word into one symbol.
    """
    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for w in words():
        vocab[w + "</w>"] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    pieces: set[str] = set()
    for w in words():
        pieces.update(_symbols(w))
    done = False
    while not done:
        done = True
        for w in words():
            syms = _bpe(_symbols(w), ranks)
            if len(syms) > 1:
                ranks[(syms[0], syms[1])] = len(ranks)
                pieces.add(syms[0] + syms[1])
                done = False
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return vocab, merges


def save_tokenizer(folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": UNK,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": UNK}, indent=2))


def vocab_size() -> int:
    return max(build_vocab()[0].values()) + 1


def first_piece_id() -> int:
    """Ids at or above this are pieces of words, not words."""
    return 3 + len(words())


def unknown_words(text: str) -> list[str]:
    """The words of `text` (lower-cased, split like CLIP) that are not in the vocabulary."""
    import re

    known = set(words())
    return [w for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()) if w not in known]
