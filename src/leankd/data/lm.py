"""Language-model text: read a corpus (.txt, JSON lines, or a folder of them), cut it into contiguous parts, and
tokenize it — by characters, a byte-level BPE trained on the training part, or a local Hugging Face tokenizer.

Why contiguous parts, cut before tokenizing: the validation and test text must be text the model never saw and the
tokenizer was never fitted on (a BPE trained on all of it would have learned their words). Train comes first,
validation then test, like nanoGPT's 90/10 cut of Tiny Shakespeare, so neighbouring sentences never straddle two parts
except at the two cuts.

Tokenizers are one small interface (`encode`, `decode`, `vocab`, `size`, `save`, `identity`): the task and the
vocabulary check never ask which kind they hold. `identity` is a digest of what the tokenizer maps (its vocabulary and
merges): part of the dataset's fingerprint, so a retrained or other tokenizer retrains every stage.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DataError, MissingPackageError
from .lines import read_text

TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json")
UNKNOWN_CHAR = "\ufffd"  # characters of val/test the training part never had


def refuse_demo(source: str) -> None:
    """`data.source` is left at its default, the image demo set: say what a causal LM reads instead."""
    if str(source) == "demo":
        raise DataError("data.source demo is an image set; a causal_lm task reads text: give a .txt or .jsonl file or "
                        "a folder of them (e.g. ../shared/datasets/text/tinyshakespeare/input.txt)")


def read_corpus(source: str, fmt: str = "auto", column: str = "text", encoding: str = "utf-8") -> tuple[str, list[str]]:
    """(the whole text, the files it came from). A folder's files are read in sorted order and joined with a blank
    line; JSON lines give one text per line (`column`), joined the same way."""
    refuse_demo(source)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data.source {source}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)}); give "
                            "a .txt or .jsonl file or a folder of them")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data.source {source}: no such file or folder; give a .txt or .jsonl file or a folder of them")
    texts = [_read_one(f, fmt, column, encoding) for f in files]
    text = "\n\n".join(t for t in texts if t)
    if not text.strip():
        raise DataError(f"data.source {source}: the corpus is empty (no text in {len(files)} file"
                        f"{'s' if len(files) != 1 else ''}); give a file with text in it")
    return text, [str(f) for f in files]


def _read_one(path: Path, fmt: str, column: str, encoding: str) -> str:
    text = read_text(path, encoding, "data.lm.encoding")
    jsonl = fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() in (".jsonl", ".json"))
    if not jsonl:
        return text
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg}); a JSON-lines file has one object per "
                            "line (set data.lm.format: txt to read it as plain text)") from None
        if not isinstance(row, dict) or column not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}, line {number}: no {column!r} key (found {keys}); set data.lm.text_column to "
                            "the key that holds the text")
        out.append(str(row[column]))
    return "\n\n".join(out)


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Contiguous parts in order train | val | test, cut at character positions (a part may be empty)."""
    n = len(text)
    val_start = round(n * (1.0 - val_fraction - test_fraction))
    test_start = round(n * (1.0 - test_fraction))
    return {"train": text[:val_start], "val": text[val_start:test_start], "test": text[test_start:]}


class CharTokenizer:
    """One token per character; the vocabulary is the training part's characters, sorted (nanoGPT's 65 for Tiny
    Shakespeare). A character the training part never had maps to one extra unknown symbol, added only when some
    other part needs it (then it is said in the task's notes)."""

    kind = "chars"

    def __init__(self, symbols: Sequence[str]):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def fit(cls, train: str, others: Sequence[str] = ()) -> "CharTokenizer":
        symbols = sorted(set(train))
        if any(ch not in set(symbols) for other in others for ch in set(other)):
            symbols.append(UNKNOWN_CHAR)
        return cls(symbols)

    @property
    def size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        unknown = self.index.get(UNKNOWN_CHAR)
        return [self.index.get(ch, unknown) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i] if 0 <= i < len(self.symbols) else UNKNOWN_CHAR for i in ids)

    def save(self, path: Path) -> None:
        from ..io import write_json_atomic

        write_json_atomic(path, {"kind": "chars", "symbols": self.symbols})

    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.symbols).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"characters ({self.size} symbols)"


class HFTokenizer:
    """A `tokenizers.Tokenizer`: a byte-level BPE trained here, or a local Hugging Face tokenizer folder's
    tokenizer.json. No special tokens are added when encoding (blocks of running text have no sentence starts)."""

    kind = "bpe"

    def __init__(self, tokenizer, origin: str):
        self.tok = tokenizer
        self.origin = origin

    @classmethod
    def train_bpe(cls, train: str, vocab_size: int) -> "HFTokenizer":
        """A byte-level BPE (GPT-2's scheme) fitted on the training text only. Deterministic for the same text."""
        tokenizers = _tokenizers()
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_chunks(train), trainer=trainer, length=None)
        return cls(tok, f"byte-level BPE trained on the training part ({tok.get_vocab_size()} tokens)")

    @classmethod
    def from_folder(cls, folder: str) -> "HFTokenizer":
        tokenizers = _tokenizers()
        path = Path(folder).expanduser() / "tokenizer.json"
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions for a bad file
            raise DataError(f"data.lm.tokenizer {folder}: {path.name} cannot be read ({e}); give a folder saved with "
                            "save_pretrained by a fast (Rust) tokenizer") from None
        return cls(tok, f"Hugging Face tokenizer {folder} ({tok.get_vocab_size()} tokens)")

    @property
    def size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # in pieces: one multi-megabyte string is slow to pre-tokenize, lines are independent under byte-level BPE
        return [i for enc in self.tok.encode_batch(_chunks(text), add_special_tokens=False) for i in enc.ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, path: Path) -> None:
        from ..io import atomic_path

        with atomic_path(path) as tmp:
            self.tok.save(str(tmp))

    def identity(self) -> str:
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    def describe(self) -> str:
        return self.origin


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """`text` cut after line breaks into pieces of about `size` characters (concatenating them gives `text`)."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def _tokenizers():
    try:
        import tokenizers
        import tokenizers.decoders  # noqa: F401
        import tokenizers.models  # noqa: F401
        import tokenizers.pre_tokenizers  # noqa: F401
        import tokenizers.trainers  # noqa: F401
    except ImportError:
        raise MissingPackageError("data.lm.tokenizer bpe (or a tokenizer folder) needs the tokenizers package: pip "
                                  "install 'leankd[text]' or pip install tokenizers") from None
    return tokenizers


def build_tokenizer(setting: str, vocab_size: int, parts: dict[str, str]):
    """The tokenizer `data.lm.tokenizer` names, fitted on `parts['train']` when it is learned here."""
    if setting == "chars":
        return CharTokenizer.fit(parts["train"], [parts["val"], parts["test"]])
    if setting == "bpe":
        return HFTokenizer.train_bpe(parts["train"], vocab_size)
    return HFTokenizer.from_folder(setting)


def load_tokenizer(path: Path) -> Optional[object]:
    """A tokenizer saved by `save` (a run directory's lm_tokenizer.json): what a deployed model decodes with."""
    data = json.loads(Path(path).read_text())
    if data.get("kind") == "chars":
        return CharTokenizer(data["symbols"])
    return HFTokenizer(_tokenizers().Tokenizer.from_str(Path(path).read_text()), str(path))


__all__ = ["refuse_demo", "read_corpus", "split_text", "CharTokenizer", "HFTokenizer", "build_tokenizer", "load_tokenizer"]
