"""The world's word-level CLIP tokenizer: every caption word and the rare subject tokens.

Each word is one token, written the way CLIP's BPE spells a whole word
(``star</w>``), with the merges that build it from its letters; single letters
stay in the vocabulary so that an unknown word still encodes (letter by letter)
instead of failing. The rare tokens (``RARE_TOKENS``) are in the vocabulary but
never in a pretraining caption, like "sks" in Stable Diffusion: their
embeddings stay at their random initialisation, which is what a subject's
concept neurons start from.

Pitfall (transformers 5.x): ``CLIPTokenizer(vocab_file=..., merges_file=...)``
silently ignores the files; write a folder and use ``from_pretrained``.

>>> words = tokenizer_words()
>>> "sks" in words and "star" in words
True
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.world.scenes import CAPTION_WORDS

# Subject identifiers: in the vocabulary, never in pretraining captions. The
# first four belong to bundled subjects, the rest are spares for users.
RARE_TOKENS: tuple[str, ...] = ("sks", "vnt", "zwx", "pxr", "ktn", "qlm", "bsd", "hjy")
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_LENGTH = 24  # tokens, BOS and EOS included; the longest caption needs 19
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tokenizer_words() -> list[str]:
    """All whole-word tokens, in id order after the letters (caption words, then rare tokens).

    >>> tokenizer_words()[:3]
    ['a', 'an', 'photo']
    """
    words: list[str] = []
    for word in CAPTION_WORDS + RARE_TOKENS:
        if word not in words:
            words.append(word)
    return words


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP-style BPE tables that spell each word as one token."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for letter in LETTERS:
        add(letter)
    for letter in LETTERS:
        add(letter + "</w>")
    merges: list[str] = []
    for word in tokenizer_words():
        # Right-to-left merges that each end in "</w>": "r</w>" <- "a r</w>" -> "ar</w>",
        # then "t ar</w>", "s tar</w>". Only a word's last pair can then ever match a
        # merge, so merge ranks never compete and every word ends as one token.
        current = word[-1] + "</w>"
        for letter in reversed(word[:-1]):
            merge = f"{letter} {current}"
            current = letter + current
            if merge not in merges:
                merges.append(merge)
            add(current)
    add(BOS_TOKEN)
    add(EOS_TOKEN)
    return vocab, merges


def write_tokenizer(folder: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and configs for ``CLIPTokenizer.from_pretrained``.

    Returns the folder. Pads with the end token, as Stable Diffusion 1.x does.

    >>> from transformers import CLIPTokenizer
    >>> tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer("/tmp/tok"))  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return folder


def vocabulary_size() -> int:
    """Number of token ids (letters, word pieces, words, BOS, EOS).

    >>> vocabulary_size() > len(tokenizer_words())
    True
    """
    return len(_vocab_and_merges()[0])
