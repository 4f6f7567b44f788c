"""Extra sources for sequence-level KD: inputs without references that the teacher labels (beam search, once,
cached), so a student imitates the teacher on many more inputs than the training set holds. This is the
transfer-set augmentation of Tang et al. (2019) and Beyer et al.'s (2022) "function matching", applied to
Kim & Rush's seq-KD: a teacher's output is a target for *any* input, a reference exists only for training ones.

Two kinds, either or both:
- `count` made-up sources sampled from an n-gram (Markov) model of the training sources' symbols — for G2P,
  pronounceable non-words such as "mildrence" that exercise the same spelling-to-sound rules;
- a `file` of real unlabeled sources, one per line (what a user usually has: in-domain inputs without labels).

Sources that occur in any split are dropped: training ones already have references, and validation or test ones
would let the teacher label the evaluation inputs for the student (leakage).
"""
from __future__ import annotations

import bisect
import random
from itertools import accumulate
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..data.lines import read_text, split_lines
from ..data.seq2seq import tokenize
from ..errors import DataError

_START, _END = "\x02", "\x03"  # context padding and the end mark: never symbols of a tokenized source


def source_key(symbols: Sequence[str], tokenization: str) -> str:
    """The text of a source, as its key: `tokenize(source_key(s, t), t) == s` for the task's tokenization."""
    return ("" if tokenization == "chars" else " ").join(symbols)


def ngram_sources(sources: Iterable[Sequence[str]], count: int, order: int, seed: int,
                  exclude: set[tuple[str, ...]]) -> list[list[str]]:
    """Up to `count` distinct sources sampled from an `order`-gram model of the distinct `sources` (the last
    `order - 1` symbols predict the next one, or the end), none in `exclude`, none longer than the longest
    training source. Seeded: the same data, count, order and seed give the same list. Fewer come back when a small
    training set cannot make that many new ones (after 20 tries per wanted source)."""
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    table: dict[tuple[str, ...], dict[str, int]] = {}
    longest = 0
    for src in dict.fromkeys(tuple(s) for s in sources):  # a word with several pronunciations counts once
        seq = [_START] * (order - 1) + list(src) + [_END]
        longest = max(longest, len(src))
        for i in range(order - 1, len(seq)):
            nxt = table.setdefault(tuple(seq[i - order + 1:i]), {})
            nxt[seq[i]] = nxt.get(seq[i], 0) + 1
    if not table:
        return []
    # per context: its symbols and cumulative counts, for one bisect per sampled symbol
    model = {ctx: (list(nxt), list(accumulate(nxt.values()))) for ctx, nxt in table.items()}
    rng = random.Random(seed)
    out: list[list[str]] = []
    seen = set(exclude)
    for _ in range(20 * count):
        if len(out) >= count:
            break
        context, sample = (_START,) * (order - 1), []
        while len(sample) <= longest:
            symbols, cumulative = model[context]
            symbol = symbols[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
            if symbol == _END:
                break
            sample.append(symbol)
            context = (context + (symbol,))[1:] if order > 1 else ()
        if sample and len(sample) <= longest and tuple(sample) not in seen:
            seen.add(tuple(sample))
            out.append(sample)
    return out


def file_sources(path: str | Path, tokenization: str, exclude: set[tuple[str, ...]]) -> list[list[str]]:
    """The distinct sources of a text file (one per line, blank lines skipped), minus those in `exclude`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"distill.seq.extra_sources.file: {path} not found: give a text file with one unlabeled "
                        "source per line")
    out, seen = [], set(exclude)
    for line in split_lines(read_text(path, "utf-8")):  # not splitlines(): U+0085 inside a line is text
        symbols = tokenize(line, tokenization)
        if symbols and tuple(symbols) not in seen:
            seen.add(tuple(symbols))
            out.append(symbols)
    return out


def collect_extra_sources(task, count: int, order: int, file: Optional[str], seed: int
                          ) -> tuple[list[list[str]], dict, list[str]]:
    """The extra sources of a seq2seq task (made-up ones first, then the file's), their counts for the report, and
    warnings for the log. Excluded: every training source and the whole validation and test pools
    (`task.held_out_sources`); file lines with a symbol the training sources never use (the student could only
    read it as <unk>: e.g. capitals when the training words are lower case). Raises if nothing is left, since the
    +extra student would then be the plain seq-KD one under another name."""
    exclude = {tuple(s) for s in task.splits["train"].pairs.sources} | set(task.held_out_sources)
    warnings: list[str] = []
    made_up = ngram_sources(task.splits["train"].pairs.sources, count, order, seed, exclude) if count else []
    if len(made_up) < count:
        warnings.append(f"the {order}-gram model made only {len(made_up)} new sources of the {count} asked (a small "
                        "training set); going on with those")
    from_file, unknown = [], 0
    if file:
        known = set(task.src_vocab.index)
        for src in file_sources(file, task.tokenization, exclude | {tuple(s) for s in made_up}):
            if set(src) <= known:
                from_file.append(src)
            else:
                unknown += 1
        if unknown:
            warnings.append(f"{file}: {unknown} sources use symbols the training sources never do (e.g. another "
                            "case or alphabet) and were left out")
    if not made_up and not from_file:
        raise DataError("distill.seq.extra_sources: no new sources (every one is a training, validation or test "
                        "source, or unreadable): the +extra students would equal seq; give other sources or remove "
                        "them")
    info = {"made_up": len(made_up), "from_file": len(from_file), "order": order if count else None,
            "file_unknown_symbols": unknown if file else None}
    return made_up + from_file, info, warnings
