"""Tables of examples on disk, shared by every task that reads them (text classification, seq2seq): which file of a
folder holds which split, and the rows of a TSV, CSV or JSON-lines file.

Why one module: a folder of `train/dev/test` files, a headerless TSV and a file in another encoding mean the same
thing to every task, so they are found and read by the same rules and fail with the same messages. GLUE's TSVs are
not valid CSV (unbalanced quotes inside sentences), so TSVs are split on tabs with no quoting at all. Files are
parsed by the csv module on a `newline=''` stream, never split with `str.splitlines()` (see `lines.py`).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import DataError
from .lines import read_text, split_lines, text_stream

SUFFIX_FORMAT = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".label": "trec"}
# split name -> file stems that hold it (GLUE: dev; Hugging Face exports: validation)
SPLIT_STEMS = {"train": ("train",), "val": ("dev", "validation", "val"), "test": ("test",)}
# a split file may carry a dataset prefix: eng_train.tsv, eng-dev.tsv (SIGMORPHON: <language>_<split>.tsv)
PREFIX_SEPARATORS = ("_", "-", ".")

Key = Union[str, int]


@dataclass
class Row:
    """One record: `line` is the (first) line it starts on, `values` maps a column name (or position, 0-based, in a
    file without a header) to its text."""

    line: int
    values: dict[Key, object]


def format_of(path: Path, fmt: str = "auto", setting: str = "data.text.format") -> str:
    if fmt != "auto":
        return fmt
    try:
        return SUFFIX_FORMAT[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set {setting} to one of "
                        f"{', '.join(sorted(set(SUFFIX_FORMAT.values())))}") from None


def _split_of(stem: str) -> Optional[tuple[str, str, int]]:
    """(split, dataset prefix, preference) of a file stem: `train` -> (train, '', 0), `eng_dev` -> (val, 'eng', 0),
    `validation` -> (val, '', 1), else None. The preference orders several names of one split (dev before val)."""
    low = stem.lower()
    for split, stems in SPLIT_STEMS.items():
        for rank, s in enumerate(stems):
            if low == s:
                return split, "", rank
            for sep in PREFIX_SEPARATORS:
                if low.endswith(sep + s) and len(low) > len(s) + 1:
                    return split, stem[:-len(s) - 1], rank
    return None


def find_split_files(source: Path, suffixes: Optional[tuple[str, ...]] = None) -> dict[str, Path]:
    """{split: file} of `data.source`: one file (the training data), or a folder of split files named train / dev
    (or validation, val) / test, optionally after one dataset prefix (eng_train.tsv, eng_dev.tsv, eng_test.tsv)."""
    suffixes = suffixes or tuple(SUFFIX_FORMAT)
    source = Path(source).expanduser()
    wanted = "train, dev and test files (" + ", ".join(f"train{s}" for s in suffixes) + ")"
    if not source.exists():
        raise DataError(f"data.source {str(source)!r} does not exist: give a folder with {wanted} or a single "
                        "training file")
    if source.is_file():
        return {"train": source}
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    groups: dict[str, dict[str, tuple[int, Path]]] = {}
    for p in files:
        hit = _split_of(p.stem) if p.suffix.lower() in suffixes else None
        if hit is not None:
            split, prefix, rank = hit
            best = groups.setdefault(prefix, {}).get(split)
            if best is None or rank < best[0]:
                groups[prefix][split] = (rank, p)
    with_train = {prefix: found for prefix, found in groups.items() if "train" in found}
    found_names = [p.name for p in files][:12] or "nothing"
    if not with_train:
        raise DataError(f"data.source {str(source)!r}: no training file; expected {wanted}, optionally with a "
                        f"dataset prefix (eng_train.tsv); found {found_names}")
    if len(with_train) > 1 and "" in with_train:  # train.tsv beside e.g. augmented_train.tsv: the plain one, as
        with_train = {"": with_train[""]}             # before dataset prefixes were recognised
    if len(with_train) > 1:
        names = sorted(f"{prefix or '(no prefix)'}: {', '.join(p.name for _, p in found.values())}"
                       for prefix, found in with_train.items())
        raise DataError(f"data.source {str(source)!r} holds the split files of {len(with_train)} datasets "
                        f"({'; '.join(names)}): point data.source at a folder with one dataset's files (e.g. one "
                        "folder per language), or at one training file")
    (found,) = with_train.values()
    return {split: found[split][1] for split in SPLIT_STEMS if split in found}


def read_rows(path: Path, fmt: str, encoding: str = "utf-8", header: bool = True,
              encoding_setting: str = "data.text.encoding") -> list[Row]:
    """The records of a TSV/CSV (header row -> column names; `header=False` -> positions 0, 1, ...) or JSON-lines
    file. Errors name the file, the line and the fix."""
    text = read_text(path, encoding, encoding_setting)
    if fmt == "jsonl":
        return _jsonl_rows(path, text)
    if fmt == "tsv":
        reader = csv.reader(text_stream(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(text_stream(text))
    names: Optional[list[str]] = None
    rows: list[Row] = []
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            line = reader.line_num
            if header and names is None:
                names = fields
                continue
            width = len(names) if names is not None else len(rows[0].values) if rows else len(fields)
            if len(fields) != width:
                what = f"the header has {width} ({names})" if names is not None else f"the first row has {width}"
                raise DataError(f"{path}, row {line}: {len(fields)} fields but {what}; a tab or comma inside a text? "
                                "use the csv or jsonl format for texts that contain separators")
            keys = names if names is not None else range(len(fields))
            rows.append(Row(line, dict(zip(keys, fields))))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: not valid {fmt.upper()} ({e}); check the quoting, or "
                        "set the format to tsv (no quoting)") from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows = []
    for i, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {i}: not JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {i}: expected a JSON object per line ({{\"column\": value, ...}}), got "
                            f"{type(value).__name__}")
        rows.append(Row(i, value))
    return rows


def columns_of(rows: list[Row]) -> list[Key]:
    return list(rows[0].values) if rows else []
