"""Text tables: GLUE-style TSV, CSV, JSON lines and TREC's `LABEL:fine text` lines -> texts, optional second texts
(sentence pairs), labels.

Why this module reads files itself instead of `datasets`: nothing may be downloaded, the files are small, and GLUE's
TSVs are not valid CSV (unbalanced quotes inside sentences), so they are split on tabs with no quoting at all.
Columns are found by name in the header; `text_column` may list alternatives, because one dataset often names the
same column differently per file (SST-2: `sentence` in train, `content` in dev/test).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DataError

FORMATS = ("tsv", "csv", "jsonl", "trec")
_SUFFIX_FORMAT = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".label": "trec"}
# split name -> file stems that hold it (GLUE: dev; Hugging Face exports: validation)
SPLIT_STEMS = {"train": ("train",), "val": ("dev", "validation", "val"), "test": ("test",)}


@dataclass
class TextTable:
    path: str
    texts: list[str]
    labels: list[str]  # raw label strings; the task maps them to classes
    pairs: Optional[list[str]] = None  # the second sentence of sentence-pair tasks
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def format_of(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    try:
        return _SUFFIX_FORMAT[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set data.text.format to one "
                        f"of {', '.join(FORMATS)}") from None


def find_split_files(source: Path) -> dict[str, Path]:
    """{split: file} in a folder laid out as train.tsv / dev.tsv / test.tsv (any supported suffix)."""
    if not source.exists():
        raise DataError(f"data.source {str(source)!r} does not exist: give a folder with train.tsv (and dev/test "
                        "files) or a single train file")
    if source.is_file():
        return {"train": source}
    found: dict[str, Path] = {}
    for split, stems in SPLIT_STEMS.items():
        for stem in stems:
            hits = sorted(p for p in source.iterdir() if p.stem == stem and p.suffix.lower() in _SUFFIX_FORMAT)
            if hits:
                found[split] = hits[0]
                break
    if "train" not in found:
        raise DataError(f"{source}: no train file (train.tsv, train.csv, train.jsonl or train.label); found "
                        f"{sorted(p.name for p in source.iterdir())[:10]}")
    return found


def read_table(path: Path, fmt: str = "auto", text_column: Sequence[str] = ("sentence",),
               pair_column: Optional[str] = None, label_column: str = "label") -> TextTable:
    """Read one split. Errors name the file, the row and what to set in the recipe."""
    path = Path(path)
    fmt = format_of(path, fmt)
    if fmt == "trec":
        return _read_trec(path)
    rows = _read_rows(path, fmt)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = list(rows[0].keys())
    text_key = next((c for c in text_column if c in columns), None)
    if text_key is None:
        raise DataError(f"{path}: none of the text columns {list(text_column)} is in its header {columns}; set "
                        "data.text.text_column")
    for key, what in ((pair_column, "pair_column"), (label_column, "label_column")):
        if key is not None and key not in columns:
            raise DataError(f"{path}: column {key!r} (data.text.{what}) is not in its header {columns}")
    texts, pairs, labels = [], [] if pair_column else None, []
    for i, row in enumerate(rows):
        line = i + 2 if fmt != "jsonl" else i + 1
        text, label = row.get(text_key), row.get(label_column)
        if text is None or label is None or (pair_column and row.get(pair_column) is None):
            raise DataError(f"{path}, row {line}: missing a value (columns {columns}); is the file cut short or a "
                            "separator missing?")
        texts.append(str(text))
        labels.append(str(label).strip())
        if pairs is not None:
            pairs.append(str(row[pair_column]))
    return TextTable(str(path), texts, labels, pairs)


def _read_rows(path: Path, fmt: str) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {i}: not JSON ({e.msg})") from None
        return rows
    lines = text.splitlines()
    if fmt == "tsv":  # GLUE TSVs: split on tabs, no quoting (sentences contain unbalanced quotes)
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines)
    table = [r for r in reader if r]
    if not table:
        return []
    header, body = table[0], table[1:]
    rows = []
    for i, r in enumerate(body, 2):
        if len(r) != len(header):
            raise DataError(f"{path}, row {i}: {len(r)} fields but the header has {len(header)} ({header}); a tab or "
                            "comma inside a text? use the csv or jsonl format for texts that contain separators")
        rows.append(dict(zip(header, r)))
    return rows


def _read_trec(path: Path) -> TextTable:
    """TREC question classification: `COARSE:fine question words` per line, latin-1; the coarse label is the class."""
    texts, labels = [], []
    for i, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
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
