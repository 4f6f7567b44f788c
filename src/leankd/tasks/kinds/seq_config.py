"""The seq2seq kind's own recipe sections: `data.seq` (columns, tokenization, held-out share, decoding) and
`distill.seq` (which word- and sequence-level students, how the teacher decodes the training set). Declared on
the seq2seq kind (seq2seq.py), kept in this module of its own so the recipe's old import path can read them
without importing the kind's builders."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, get_args

from pydantic import Field, field_validator, model_validator

from ...core.params import Strict, known_encoding


class SeqConfig(Strict):
    """Sequence-to-sequence (`data.task: seq2seq`): columns, tokenization, held-out share, decoding settings."""

    format: Literal["auto", "tsv", "csv", "jsonl"] = Field("auto", description="of a pairs file (data.source "
                                                                             "cmudict needs none)")
    source_column: str | int = Field("source", description="a header name, or a 0-based column position")
    target_column: str | int = Field("target", description="a header name, or a 0-based column position")
    header: bool = Field(True, description="false: the file has no header row (e.g. SIGMORPHON G2P TSVs), columns "
                                           "are positions; left at their names, the columns are 0 and 1")
    encoding: str = Field("utf-8", description="text encoding of the pairs files")
    tokenization: Literal["chars", "whitespace"] = Field("chars", description="how sources are split into symbols")
    target_tokenization: Optional[Literal["chars", "whitespace"]] = Field(None, description="default: tokenization")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="sources held out for the test split (all "
                                                                  "targets of a source go to one split)")
    beam: int = Field(5, ge=1, description="beam size of the reported beam-search quality and latency")
    length_penalty: float = Field(1.0, ge=0.0, description="beam hypotheses rank by log-prob / length ** this")
    max_decode_len: Optional[int] = Field(None, ge=1, description="default: 1.5 x the longest training target + 5")
    bucket: bool = Field(True, description="training batches of similar lengths (seeded chunks sorted by length, "
                                           "batch order shuffled): far fewer padded RNN steps")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return known_encoding(v)

    @model_validator(mode="after")
    def _columns(self) -> "SeqConfig":
        """A file without a header has no column names: the default names mean the first two columns."""
        for name, default, position in (("source_column", "source", 0), ("target_column", "target", 1)):
            value = getattr(self, name)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} = {value}: a column position counts from 0")
            if not self.header and isinstance(value, str):
                if value != default:
                    raise ValueError(f"{name} = {value!r} is a column name, but header is false (the file has no "
                                     f"header row): give its 0-based position, e.g. {name}: {position}")
                object.__setattr__(self, name, position)  # not `self.x =`: validate_assignment would recurse
        return self



SeqMethod = Literal["word", "seq", "interp", "seq+word", "interp+word", "seq+extra", "seq+word+extra"]
SEQ_METHODS = get_args(SeqMethod)


class ExtraSourcesConfig(Strict):
    """Sources without references that the teacher labels for the `+extra` students (transfer-set augmentation,
    Tang et al. 2019): made-up ones from an n-gram model of the training sources, and/or a file of real ones.
    Sources found in any split are dropped (validation/test ones would leak)."""

    count: int = Field(0, ge=0, description="made-up sources sampled from an n-gram model of the training "
                                            "sources' symbols (G2P: pronounceable non-words)")
    order: int = Field(5, ge=1, le=12, description="n of that n-gram model: the last n-1 symbols pick the next")
    file: Optional[str] = Field(None, description="a text file of unlabeled sources, one per line")

    @model_validator(mode="after")
    def _some_sources(self) -> "ExtraSourcesConfig":
        if self.count == 0 and self.file is None:
            raise ValueError("distill.seq.extra_sources gives no sources: set count (made-up sources) and/or file")
        if self.file is not None and not Path(self.file).is_file():  # now, not after the teacher has trained
            raise ValueError(f"distill.seq.extra_sources.file: {self.file} not found: give a text file with one "
                             "unlabeled source per line")
        return self


class SeqDistillConfig(Strict):
    """Sequence-to-sequence distillation (Kim & Rush 2016): which students to train and how the teacher decodes
    the training set for the sequence-level ones (once; its outputs are cached and fingerprinted)."""

    students: list[SeqMethod] = Field(
        default_factory=lambda: ["word", "seq", "interp"],
        description="word: per-token KD under teacher forcing (distill.alpha / temperature); seq: trained on the "
                    "teacher's beam output; interp: on the n-best hypothesis closest to the reference; x+word: both; "
                    "seq+extra / seq+word+extra: plus the teacher's outputs on distill.seq.extra_sources")
    main: SeqMethod = Field("seq", description="the student reported as 'student' (compressed, compared in ratios)")
    beam: int = Field(5, ge=1, description="the teacher's beam when it decodes the training set")
    n_best: Optional[int] = Field(None, ge=1, description="interp: hypotheses considered (default: beam)")
    keep_references: bool = Field(False, description="seq / interp: train on the references too (beside the "
                                                     "teacher's outputs) instead of on the outputs only")
    extra_sources: Optional[ExtraSourcesConfig] = Field(None, description="for the +extra students: unlabeled "
                                                                          "sources the teacher labels")

    @model_validator(mode="after")
    def _main_is_trained(self) -> "SeqDistillConfig":
        object.__setattr__(self, "students", list(dict.fromkeys(self.students)))  # validate_assignment would recurse
        if self.main not in self.students:
            raise ValueError(f"distill.seq.main {self.main!r} is not among distill.seq.students {self.students}: "
                             "add it there")
        if self.n_best is not None and self.n_best > self.beam:
            raise ValueError(f"distill.seq.n_best {self.n_best} exceeds distill.seq.beam {self.beam}: a beam of "
                             f"{self.beam} yields at most {self.beam} hypotheses")
        extra = [m for m in self.students if m.endswith("+extra")]
        if extra and self.extra_sources is None:
            raise ValueError(f"distill.seq.students {extra} train on extra sources, but distill.seq.extra_sources is "
                             "not set: give it a count (made-up sources) and/or a file")
        if self.extra_sources is not None and not extra:
            raise ValueError("distill.seq.extra_sources is set but no student uses it: add seq+extra (or "
                             "seq+word+extra) to distill.seq.students, or remove extra_sources")
        return self
