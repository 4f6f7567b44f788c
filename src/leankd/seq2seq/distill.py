"""Sequence-level distillation as a data step (Kim & Rush 2016): the teacher decodes the training sources once with
beam search; students then train on its outputs (seq-KD), or on the n-best hypothesis closest to the reference
(seq-interp), with any loss (`+word` adds word-level KD on those targets); `+extra` adds the teacher's outputs on
sources without references (`extra_sources.py`).

The teacher's n-best lists, and its outputs on the extra sources, are cached in JSON files named by a fingerprint
of everything that shapes them (the teacher stage, the data, beam, n-best, length penalty, maximum length; for
extra sources, a hash of their list), written atomically; a rerun with the same fingerprint reads the file and
never loads the teacher for it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..data.seq2seq import Pairs, tokenize
from ..io import write_json_atomic
from .extra_sources import source_key
from .metrics import edit_distance


@dataclass
class TeacherOutputs:
    """The teacher's n-best outputs (symbol lists, best first) for every distinct training source."""

    fingerprint: str
    path: Path
    nbest: dict[str, list[list[str]]]
    beam: int
    build_s: Optional[float]  # None: read from an existing file
    info: dict = field(default_factory=dict)  # where the sources came from (extra sources), for the report

    def as_dict(self) -> dict:
        return {"path": str(self.path), "sources": len(self.nbest), "beam": self.beam,
                "n_best": max((len(v) for v in self.nbest.values()), default=0),
                "disk_mb": round(self.path.stat().st_size / 1e6, 3), "build_s": self.build_s,
                "reused": self.build_s is None, **self.info}


def build_or_load_outputs(directory: Path, fingerprint: str, task, teacher, beam: int, n_best: int,
                          log: Callable[[str], None] = print, batch_size: int = 256,
                          sources: Optional[list[list[str]]] = None) -> TeacherOutputs:
    """Read the cached n-best lists, or decode the training split (or `sources`, symbol lists: extra sources
    without references, keyed by their text) with `teacher` and cache them."""
    training = sources is None
    path = Path(directory) / f"seq-{'outputs' if training else 'extra'}-{fingerprint}.json"
    if path.exists():
        blob = json.loads(path.read_text())
        if blob.get("fingerprint") == fingerprint:
            log(f"seq-KD: reusing the teacher's decoded {'training set' if training else 'extra sources'} {path} "
                "(same fingerprint)")
            return TeacherOutputs(fingerprint, path, {k: [h.split() for h in v] for k, v in blob["nbest"].items()},
                                  blob["beam"], None)
    count = len(task.sources("train")[0]) if training else len(sources)
    log(f"seq-KD: the teacher decodes {count} {'training' if training else 'extra'} sources (beam {beam}, "
        f"{n_best}-best), once ...")
    t0 = time.perf_counter()
    if training:
        keys, hyps, _ = task.decode_split(teacher, "train", beam, batch_size=batch_size, n_best=n_best)
    else:
        keys = [source_key(s, task.tokenization) for s in sources]
        hyps = task.decode_sources(teacher, sources, beam, batch_size=batch_size, n_best=n_best)
    decode = task.tgt_vocab.decode
    nbest = {k: [decode(h.tokens) for h in hs] for k, hs in zip(keys, hyps)}
    build_s = time.perf_counter() - t0
    write_json_atomic(path, {"fingerprint": fingerprint, "beam": beam, "n_best": n_best, "build_s": build_s,
                             "nbest": {k: [" ".join(h) for h in v] for k, v in nbest.items()}})
    log(f"seq-KD: decoded in {build_s:.1f} s -> {path}")
    return TeacherOutputs(fingerprint, path, nbest, beam, build_s)


def training_pairs(train: Pairs, outputs: TeacherOutputs, method: str, keep_references: bool = False,
                   extra: Optional[TeacherOutputs] = None, tokenization: str = "chars") -> tuple[Pairs, dict]:
    """The pairs a sequence-level student trains on, and counts for the report.

    `seq`: each distinct source with the teacher's best hypothesis. `interp`: for each reference, the n-best
    hypothesis nearest to it by edit distance (the first, i.e. the more likely, on ties); repeats dropped.
    `keep_references` adds the original pairs. Sources the teacher left empty keep their references. `extra`
    (the teacher's outputs on sources without references, keyed by their text) adds a pair for each of its
    sources that is not a training source and got a non-empty output."""
    if method not in ("seq", "interp"):
        raise ValueError(f"unknown sequence-level method {method!r}")
    first_source: dict[str, list[str]] = {}
    for key, src in zip(train.keys, train.sources):
        first_source.setdefault(key, src)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    sources, targets, keys = [], [], []

    def add(key: str, tgt: list[str]) -> None:
        if tgt and (key, tuple(tgt)) not in seen:
            seen.add((key, tuple(tgt)))
            sources.append(first_source[key])
            targets.append(tgt)
            keys.append(key)

    matches = 0
    refs_of: dict[str, list[list[str]]] = {}
    for key, tgt in zip(train.keys, train.targets):
        refs_of.setdefault(key, []).append(tgt)
    for key, refs in refs_of.items():
        nbest = [h for h in outputs.nbest.get(key, []) if h]
        if not nbest:
            for ref in refs:
                add(key, ref)
            continue
        matches += any(nbest[0] == r for r in refs)
        if method == "seq":
            add(key, nbest[0])
        else:
            for ref in refs:
                add(key, min(nbest, key=lambda h: edit_distance(h, ref)))
        if keep_references:
            for ref in refs:
                add(key, ref)
    extra_pairs = 0
    training_sources = {tuple(src) for src in train.sources}
    for key, hyps in (extra.nbest.items() if extra is not None else ()):
        symbols = tokenize(key, tokenization)
        if tuple(symbols) not in training_sources and hyps and hyps[0]:  # a training key has its source's symbols
            first_source[key] = symbols
            before = len(sources)
            add(key, hyps[0])
            extra_pairs += len(sources) - before
    info = {"method": method, "pairs": len(sources), "original_pairs": len(train), "sources": len(refs_of),
            "teacher_best_matches_reference": round(matches / max(len(refs_of), 1), 4),
            "keep_references": keep_references, "extra_pairs": extra_pairs}
    return Pairs(sources, targets, keys), info
