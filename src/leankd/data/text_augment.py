"""Tang et al. (2019) augmentation for distillation: new unlabeled texts made from the training texts, which the
teacher labels once (cached) so a small student sees many more teacher outputs than there are labels.

Per word, with probability `mask` the word becomes `[MASK]` (which both the teacher's WordPiece tokenizer and the
word vocabulary read as one mask token), else with probability `dropout` it is dropped (our stand-in for the
paper's part-of-speech-guided replacement, which needs a tagger); then with probability `ngram` the example is cut
to a random n-gram, n in 1..`ngram_max`. Each training text gets `copies` tries; duplicates and unchanged copies
are dropped, so the report counts only texts the student has not seen.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from .words import MASK


@dataclass(frozen=True)
class AugmentSettings:
    copies: int = 4
    mask: float = 0.1
    dropout: float = 0.1
    ngram: float = 0.25
    ngram_max: int = 5


def _one(words: list[str], s: AugmentSettings, rng: random.Random) -> list[str]:
    out = []
    for w in words:
        x = rng.random()
        if x < s.mask:
            out.append(MASK)
        elif x < s.mask + s.dropout:
            continue
        else:
            out.append(w)
    if out and rng.random() < s.ngram:
        n = rng.randint(1, min(s.ngram_max, len(out)))
        start = rng.randint(0, len(out) - n)
        out = out[start:start + n]
    return out


def augment_texts(texts: list[str], pairs: Optional[list[str]], settings: AugmentSettings, seed: int
                  ) -> tuple[list[str], Optional[list[str]], list[int]]:
    """(augmented texts, their pairs or None, index of the training text each came from). Deterministic in `seed`.
    Words are split on whitespace and joined with single spaces, so the texts stay readable for any tokenizer."""
    rng = random.Random(seed)
    seen = {(t.strip(), (pairs[i].strip() if pairs is not None else None)) for i, t in enumerate(texts)}
    new_texts: list[str] = []
    new_pairs: Optional[list[str]] = [] if pairs is not None else None
    sources: list[int] = []
    for i, text in enumerate(texts):
        words = text.split()
        pair_words = pairs[i].split() if pairs is not None else None
        for _ in range(settings.copies):
            a = " ".join(_one(words, settings, rng))
            b = " ".join(_one(pair_words, settings, rng)) if pair_words is not None else None
            if not a or (b is not None and not b) or (a, b) in seen:
                continue
            seen.add((a, b))
            new_texts.append(a)
            if new_pairs is not None:
                new_pairs.append(b)
            sources.append(i)
    return new_texts, new_pairs, sources
