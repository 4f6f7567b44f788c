"""A word vocabulary built from the training texts, for students that read words rather than the teacher's
sub-word tokens (Tang et al. 2019's BiLSTM, Kim's CNN).

Why its own tokenizer: a BiLSTM with a word embedding is the classic small text student, and it needs no
sub-word vocabulary of 30k rows. Words are lowercased runs of letters/digits/apostrophes or single punctuation
marks (SST-2 and TREC are already space-tokenized, so this mostly splits on spaces). Id 0 pads, 1 is unknown,
2 is the mask token that augmentation writes (`[MASK]`, the BERT spelling, so the teacher's tokenizer reads the
same masked text as one special token), 3 separates the two texts of a sentence pair.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import DataError
from ..io import write_text_atomic

PAD, UNK, MASK, SEP = "<pad>", "<unk>", "[MASK]", "<sep>"
SPECIALS = (PAD, UNK, MASK, SEP)
_WORD = re.compile(r"\[MASK\]|[\w']+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lowercased words and punctuation marks; the mask token stays one word."""
    return [w if w == MASK else w.lower() for w in _WORD.findall(text)]


class WordVocab:
    """Words -> ids (0 pad, 1 unknown, 2 mask, 3 pair separator, then by falling frequency, ties alphabetical)."""

    def __init__(self, words: list[str]):
        if list(words[:len(SPECIALS)]) != list(SPECIALS):
            raise DataError(f"a WordVocab starts with {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: Optional[int] = None) -> "WordVocab":
        counts = Counter(w for t in texts for w in split_words(t))
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[:max(0, max_size - len(SPECIALS))]
        return cls(list(SPECIALS) + ranked)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return 0

    def ids(self, text: str, pair: Optional[str] = None, max_length: Optional[int] = None) -> list[int]:
        """Word ids of a text (and of its pair, after the separator), cut to `max_length`; a pair is cut longest
        first, as the teacher's tokenizer cuts it, so both sentences survive."""
        unk = 1
        first = [self.index.get(w, unk) for w in split_words(text)]
        if pair is None:
            return (first[:max_length] if max_length else first) or [unk]  # an empty text is one unknown word
        second = [self.index.get(w, unk) for w in split_words(pair)]
        if max_length:
            while len(first) + len(second) + 1 > max_length and (first or second):
                (first if len(first) >= len(second) else second).pop()
        return first + [self.index[SEP]] + second

    def encode(self, texts: list[str], pairs: Optional[list[str]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, L] int32 ids padded with 0, [N] lengths)."""
        rows = [self.ids(t, pairs[i] if pairs is not None else None, max_length) for i, t in enumerate(texts)]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        ids = torch.zeros((len(rows), int(lengths.max()) if rows else 1), dtype=torch.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        return ids, lengths

    def save(self, path: Path) -> None:
        """One word per line, line number = id: what a deployed student needs beside its weights."""
        write_text_atomic(path, "\n".join(self.words) + "\n")

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        if not Path(path).exists():
            raise DataError(f"word vocabulary {path} does not exist (a run writes it as word_vocab.txt)")
        return cls(Path(path).read_text(encoding="utf-8").split("\n")[:-1])
