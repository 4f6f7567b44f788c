"""The text kinds' own recipe sections: `data.text` (columns, tokenization, the primary metric) and
`distill.augment` (Tang et al. augmentation). Declared on text_classification and text_regression (text.py), kept
in this module of its own so the recipe's old import path can read them without importing the kinds' builders."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ...core.params import Strict, known_encoding
from ...core.taskkind import TASK_KINDS


def text_metric_choices() -> str:
    """The quality figures a recipe may name as its primary metric (`data.text.metric`), per task kind that
    declares some (`TaskKind.metric_choices`); all are higher-is-better."""
    return "; ".join(f"{', '.join(kind.metric_choices)} for {name}" for name, kind in TASK_KINDS.items()
                     if kind.metric_choices)


class TextConfig(Strict):
    """Text (`data.task: text_classification` or `text_regression`): which columns hold what, how to tokenize."""

    format: Literal["auto", "tsv", "csv", "jsonl", "trec"] = Field(
        "auto", description="auto: from the suffix (.tsv, .csv, .jsonl, .label = TREC's 'COARSE:fine text' lines)")
    text_column: list[str] = Field(default_factory=lambda: ["sentence", "text", "content"],
                                   description="the text column: the first of these names found in a file's header")
    pair_column: Optional[str] = Field(None, description="second sentence of sentence-pair tasks (e.g. MRPC, QNLI)")
    label_column: str = "label"
    encoding: str = Field("utf-8", description="text encoding of TSV/CSV/JSONL files (e.g. latin-1, cp1252 for "
                                               "older corpora); TREC .label files are always latin-1")
    tokenizer: Optional[str] = Field(None, description="a local Hugging Face checkpoint folder (or alias) whose fast "
                                                       "tokenizer is used; default: the teacher's (hf:...)")
    max_length: int = Field(128, ge=8, description="longer texts are truncated")
    bucket_batches: int = Field(50, ge=1, description="training batches are grouped by length within windows of "
                                                      "this many batches (dynamic padding wastes little)")
    word_min_freq: int = Field(1, ge=1, description="word-level students (text_bilstm, text_cnn): words seen fewer "
                                                    "times in the training texts read as unknown")
    word_max_size: Optional[int] = Field(None, ge=8, description="word-level students: keep the most frequent words "
                                                                 "only (default: every word of the training texts)")
    metric: Optional[str] = Field(None, description="the primary metric the KD verdict, ratios, seeds and compare "
                                                    "judge by: accuracy, macro_f1, mcc or f1_positive (two classes) "
                                                    "for text_classification; pearson or spearman for "
                                                    "text_regression. Default: the first quality objective of "
                                                    "search.objectives, else accuracy (Pearson r); set here, it wins "
                                                    "over search.objectives. Only measured: it retrains nothing")

    @field_validator("text_column", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return known_encoding(v)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not any(v in kind.metric_choices for _, kind in TASK_KINDS.items()):
            raise ValueError(f"unknown text metric {v!r}; allowed: {text_metric_choices()}")
        return v



class TextAugmentConfig(Strict):
    """Tang et al. (2019): extra unlabeled texts made from the training texts, labelled by the teacher (once, with
    teacher.cache), so a small student learns from many more teacher outputs than there are labels. Text only."""

    copies: int = Field(4, ge=1, description="augmented versions tried per training text (the paper: 20)")
    mask: float = Field(0.1, ge=0, le=1, description="per word: replaced by [MASK]")
    dropout: float = Field(0.1, ge=0, le=1, description="per word: dropped (stands in for the paper's POS-guided "
                                                        "replacement)")
    ngram: float = Field(0.25, ge=0, le=1, description="per text: cut to a random n-gram")
    ngram_max: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _changes_something(self) -> "TextAugmentConfig":
        if self.mask + self.dropout > 1:
            raise ValueError(f"mask + dropout = {self.mask + self.dropout:g} > 1: they are exclusive per word")
        if self.mask == self.dropout == self.ngram == 0:
            raise ValueError("mask, dropout and ngram are all 0: augmentation would only repeat the training texts")
        return self
