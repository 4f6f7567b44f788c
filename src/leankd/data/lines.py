"""Reading user text files: decode with a named encoding (a bad byte is a DataError naming the file, the line and the
setting that fixes it) and split into lines on line breaks only.

Why not `str.splitlines()`: it also breaks on U+0085 (NEL), U+2028/U+2029, form feeds and other separators. U+0085
is what the cp1252 ellipsis byte 0x85 becomes when a file is read as latin-1, common in older corpora (the
movie-review polarity set), so `splitlines()` cuts such a row in two. Files are split the way `open(newline='')`
and the csv module do: on \\n, \\r\\n and \\r only.
"""
from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import Iterator

from ..errors import DataError


def read_text(path: Path, encoding: str = "utf-8", setting: str = "") -> str:
    """The decoded text of `path`. `setting` names the recipe field that chooses the encoding (for the message)."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"{setting or 'encoding'} = {encoding!r} is not a known text encoding; use e.g. utf-8, "
                        "latin-1 or cp1252") from None
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file: give the path of the file itself")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check that it exists and is readable") from None
    try:
        return data.decode(encoding).removeprefix("\ufeff")  # a byte-order mark (Excel's CSVs) is not header text
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        fix = (f"set {setting} to the file's encoding (e.g. latin-1 or cp1252)" if setting
               else "re-save it as UTF-8")
        raise DataError(f"{path}, line {line}: byte {data[e.start:e.start + 1].hex()!r} at offset {e.start} is not "
                        f"valid {encoding}; {fix}, or re-save the file as {encoding}") from None


def split_lines(text: str) -> Iterator[str]:
    """The lines of `text` without their line ends, split on \\n, \\r\\n and \\r only (never U+0085, U+2028, ...)."""
    for line in io.StringIO(text, newline=""):
        yield line.rstrip("\r\n")


def text_stream(text: str) -> io.StringIO:
    """`text` as the `newline=''` stream the csv module expects (quoted fields may hold line breaks)."""
    return io.StringIO(text, newline="")
