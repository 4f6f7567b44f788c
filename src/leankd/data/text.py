"""Text tables: GLUE-style TSV, CSV, JSON lines and TREC's `LABEL:fine text` lines -> texts, optional second texts
(sentence pairs), labels.

Why this module reads files itself instead of `datasets`: nothing may be downloaded and the files are small; folders
of split files and the rows of TSV/CSV/JSONL files are found and read by `tables.py`, shared with seq2seq data.
Columns are found by name in the header; `text_column` may list alternatives, because one dataset often names the
same column differently per file (SST-2: `sentence` in train, `content` in dev/test).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DataError
from .lines import read_text, split_lines
from .tables import SPLIT_STEMS, columns_of, find_split_files, format_of, read_rows  # noqa: F401 (re-exported)

FORMATS = ("tsv", "csv", "jsonl", "trec")


@dataclass
class TextTable:
    path: str
    texts: list[str]
    labels: list[str]  # raw label strings; the task maps them to classes
    pairs: Optional[list[str]] = None  # the second sentence of sentence-pair tasks
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_table(path: Path, fmt: str = "auto", text_column: Sequence[str] = ("sentence",),
               pair_column: Optional[str] = None, label_column: str = "label", encoding: str = "utf-8") -> TextTable:
    """Read one split. Errors name the file, the row and what to set in the recipe. `encoding`: of TSV/CSV/JSONL
    files (data.text.encoding); TREC files are latin-1 by definition."""
    path = Path(path)
    fmt = format_of(path, fmt)
    if fmt == "trec":
        return _read_trec(path)
    rows = read_rows(path, fmt, encoding)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = columns_of(rows)
    text_key = next((c for c in text_column if c in columns), None)
    if text_key is None:
        raise DataError(f"{path}: none of the text columns {list(text_column)} is in its header {columns}; set "
                        "data.text.text_column")
    for key, what in ((pair_column, "pair_column"), (label_column, "label_column")):
        if key is not None and key not in columns:
            raise DataError(f"{path}: column {key!r} (data.text.{what}) is not in its header {columns}")
    texts, pairs, labels = [], [] if pair_column else None, []
    for row in rows:
        values = row.values
        text, label = values.get(text_key), values.get(label_column)
        if text is None or label is None or (pair_column and values.get(pair_column) is None):
            raise DataError(f"{path}, row {row.line}: missing a value (columns {columns}); is the file cut short or "
                            "a separator missing?")
        texts.append(str(text))
        labels.append(str(label).strip())
        if pairs is not None:
            pairs.append(str(values[pair_column]))
    return TextTable(str(path), texts, labels, pairs)


def _read_trec(path: Path) -> TextTable:
    """TREC question classification: `COARSE:fine question words` per line, latin-1; the coarse label is the class."""
    texts, labels = [], []
    for i, line in enumerate(split_lines(read_text(path, "latin-1")), 1):
        if not line.strip():
            continue
        label, sep, rest = line.partition(" ")
        coarse, colon, _fine = label.partition(":")
        if not sep or not colon or not coarse:
            raise DataError(f"{path}, line {i}: expected 'COARSE:fine question', got {line[:60]!r}")
        texts.append(rest.strip())
        labels.append(coarse)
    return TextTable(str(path), texts, labels)


def class_names_of(labels: Sequence[str]) -> list[str]:
    """Class order: 0..C-1 when the labels are exactly those integers (GLUE), else the sorted label strings."""
    unique = sorted(set(labels))
    if all(u.lstrip("-").isdigit() for u in unique):
        ints = sorted(int(u) for u in unique)
        if ints == list(range(len(ints))):
            return [str(i) for i in ints]
    return unique


def encode_labels(table: TextTable, classes: list[str]) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table.labels) - set(index))
    if unknown:
        raise DataError(f"{table.path}: labels {unknown[:5]} do not occur in the training file (classes: "
                        f"{classes[:10]}); fix the file or drop those rows")
    return [index[label] for label in table.labels]
