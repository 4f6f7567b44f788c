"""The recipe: a typed, validated description of one run. Unknown keys are errors so typos are caught.

A recipe stays short because everything has a default; `leankd validate recipe.yaml` prints the resolved
form. Errors name the field path, the bad value and what is allowed (`RecipeError`).
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, Field, GetJsonSchemaHandler, SerializeAsAny, ValidationError,
                      create_model, field_validator, model_validator)

from .core.params import Strict
from .core.taskkind import TASK_KINDS, owners
from .kd.registry import FEATURE_LOSSES, RAW, TRANSFORMS, LossTerm, check_terms, parse_terms
from .errors import RecipeError
from .search.config import SearchConfig


def _known_encoding(name: str) -> str:
    """A text encoding Python can decode with, checked when the recipe is read (not when the data is)."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"{name!r} is not a known text encoding; use e.g. utf-8, latin-1 or cp1252") from None
    return name


Precision = Literal["fp32", "bf16", "fp16"]


class AugmentConfig(Strict):
    crop_padding: int = Field(4, ge=0, description="random crop after padding by this many pixels (0 = off)")
    hflip: bool = True
    pad_mode: Literal["reflect", "zeros"] = "reflect"


class AudioConfig(Strict):
    """Keyword spotting (`data.task: keyword_spotting`): clips, log-mel features computed on the training device,
    and waveform augmentation. Defaults follow the KWS course our users come from (16 kHz, 25 ms windows, 10 ms hop,
    40 mel bands)."""

    sample_rate: int = Field(16000, gt=0, description="clips of other rates are resampled to this")
    clip_seconds: float = Field(1.0, gt=0, description="clips are zero-padded or centre-trimmed to this length")
    n_mels: int = Field(40, ge=1)
    n_fft: int = Field(400, ge=8)
    win_length: int = Field(400, ge=8)
    hop_length: int = Field(160, ge=1)
    keyword: Optional[str] = Field(None, description="set -> binary keyword-vs-rest task (a label folder or a word "
                                                      "inside _unknown_, e.g. sheila); unset -> every label a class")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="speakers held out for the test split")
    time_shift_ms: float = Field(100.0, ge=0, description="random shift of each training clip (zero fill)")
    noise_prob: float = Field(0.8, ge=0, le=1, description="chance a training clip gets background noise mixed in")
    noise_snr_db: tuple[float, float] = Field((5.0, 20.0), description="SNR range of the mixed-in noise")
    far_target: float = Field(0.01, gt=0, lt=1, description="binary task: report the false-rejection rate here")
    speaker_pattern: Optional[str] = Field(
        None, description="regex with a named group 'speaker', searched in each clip's path relative to the data "
                          "root (e.g. '^[^/]+/\\d+_(?P<speaker>[a-z]+)_\\d+\\.wav$'); unset: Speech Commands "
                          "(<speaker>_nohash_<n>) and FSDD (<digit>_<speaker>_<n>) names are recognised")

    @field_validator("speaker_pattern")
    @classmethod
    def _speaker_regex(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"speaker_pattern {v!r} is not a valid regular expression ({e}); e.g. "
                             "'(?P<speaker>[a-z]+)_\\d+\\.wav$'") from None
        if "speaker" not in compiled.groupindex:
            raise ValueError(f"speaker_pattern {v!r} has no named group 'speaker'; mark the speaker id with "
                             "(?P<speaker>...), e.g. '_(?P<speaker>[a-z]+)_\\d+\\.wav$'")
        return v

    @field_validator("keyword", mode="before")
    @classmethod
    def _keyword_not_yaml_bool(cls, v: Any) -> Any:
        """YAML 1.1 reads yes/no/on/off as booleans, and all four are Speech Commands words."""
        if isinstance(v, bool):
            raise ValueError(f"keyword is the boolean {v}: YAML reads yes/no/on/off as true/false, so quote the "
                             "word (keyword: 'yes', or --set \"data.audio.keyword='yes'\")")
        return v

    @model_validator(mode="after")
    def _windows(self) -> "AudioConfig":
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.n_fft > self.sample_rate * self.clip_seconds:
            raise ValueError("n_fft is longer than a clip: lower n_fft or raise clip_seconds")
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError("noise_snr_db is [low, high] with low <= high")
        return self


def _text_metric_choices() -> str:
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
        return _known_encoding(v)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not any(v in kind.metric_choices for _, kind in TASK_KINDS.items()):
            raise ValueError(f"unknown text metric {v!r}; allowed: {_text_metric_choices()}")
        return v


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
        return _known_encoding(v)

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


class DataConfig(Strict):
    source: str = Field("demo", description="'demo', an ImageFolder dir, a .tar/.tar.gz of one, or torchvision:NAME:ROOT")
    task: str = Field("image_classification", description="a registered task kind (leankd.tasks.TASKS)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train for per-epoch validation")
    eval_split: Literal["test", "val"] = Field("test", description="split the final report is measured on")
    image_size: Optional[int] = Field(None, gt=0)
    mean: Optional[tuple[float, float, float]] = Field(None, description="default: computed from the train split")
    std: Optional[tuple[float, float, float]] = None
    augment: AugmentConfig = AugmentConfig()
    in_memory: bool | Literal["auto"] = Field("auto", description="uint8 tensors on the device when they fit")
    cache_dir: Optional[str] = Field(None, description="where decoded images are cached (default ~/.cache/leankd)")
    num_workers: int = Field(2, ge=0, description="DataLoader workers when the data does not fit in memory")
    split_seed: Optional[int] = Field(None, ge=0, description="seed of the train/val(/test) split and of the "
                                      "limit_* subsets (default: the run's seed). Pin it to compare seeds on the same "
                                      "examples: `leankd search` does, so its seeds vary training only")
    limit_train: Optional[int] = Field(None, gt=0, description="train on N examples only: a stratified subset of "
                                                               "images, a random subset of audio clips")
    limit_test: Optional[int] = Field(None, gt=0, description="report on a stratified subset of N test images (quick "
                                                              "CPU runs; in-memory image data; the report says so)")
    audio: Optional[AudioConfig] = Field(None, description="keyword spotting settings (defaults when unset)")
    text: Optional[TextConfig] = Field(None, description="text classification settings (defaults when unset)")
    seq: Optional[SeqConfig] = Field(None, description="sequence-to-sequence settings (defaults when unset)")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return TASK_KINDS.require(v)

    @model_validator(mode="after")
    def _task_settings(self) -> "DataConfig":
        """A task kind's own sections (`TaskKind.data_sections`, e.g. keyword spotting's audio) are always carried
        resolved, so a section left out and one written out with the defaults fingerprint the same; other kinds must
        not carry one. Then the kind's own rules on its data section."""
        kind = TASK_KINDS.get(self.task)
        for section in sorted({s for _, k in TASK_KINDS.items() for s in k.data_sections}):
            if section in kind.data_sections and getattr(self, section) is None:
                object.__setattr__(self, section, _model_of(type(self).model_fields[section].annotation)())
            elif section not in kind.data_sections and getattr(self, section, None) is not None:
                raise ValueError(f"data.{section} is for data.task: {' or '.join(owners(section))}, not "
                                 f"{self.task!r}: remove it")
        kind.check_data(self)
        return self


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="multistep: fractions of training")
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = Field(False, description="CUDA only: compile the student with mode='reduce-overhead' so each "
                              "fixed-shape step replays CUDA graphs (implies compile); ignored on CPU, with a note")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="large batches: lr x (batch_size / lr_base_batch_size) (linear, Goyal et al.) or its "
        "square root (sqrt, for adaptive optimizers); pair with warmup_epochs")
    lr_base_batch_size: int = Field(128, ge=1, description="the batch size `lr` was tuned for (lr_scaling)")
    deterministic: bool = Field(False, description="deterministic CUDA kernels (slower): resume == uninterrupted on GPU too")

    @property
    def effective_lr(self) -> float:
        """`lr` after large-batch scaling: what the optimizer actually starts from."""
        ratio = self.batch_size / self.lr_base_batch_size
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scaling]

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of training strictly between 0 and 1, e.g. [0.5, 0.75]")
        return v


class _TrainOverrideBase(Strict):
    def apply(self, base: TrainConfig) -> TrainConfig:
        return TrainConfig(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


# Per-stage changes to the shared `train:` section (e.g. more epochs for the teacher): every TrainConfig field,
# optional. Generated, so the two can never drift apart; values are checked when applied (Recipe._stages).
TrainOverride = create_model(
    "TrainOverride", __base__=_TrainOverrideBase,
    **{name: (Optional[field.annotation], None) for name, field in TrainConfig.model_fields.items()},
)


class ModelConfig(Strict):
    model: str = Field(..., description="registry name (e.g. resnet20), torchvision:NAME, timm:NAME or python:module:callable")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model constructor")
    checkpoint: Optional[str] = Field(None, description="load these weights (.safetensors/.pt) instead of training")
    train: TrainOverride = TrainOverride()


class TeacherConfig(ModelConfig):
    precision: Precision = Field("fp32", description="dtype the frozen teacher runs in while distilling")
    device: Literal["same", "cpu"] = Field("same", description="cpu: keep the teacher off the GPU while the student "
                                                               "trains there (memory-aware mode for small devices)")
    cache: bool = Field(False, description="offline KD: run the teacher once per augmentation view, store its "
                                           "logits (fp16, memory-mapped) and distill from the file")
    cache_views: int = Field(8, ge=1, description="fixed augmentation views cached; each epoch replays one")
    cache_top_k: Optional[int] = Field(None, ge=1, description="many-class tasks: store the k largest logits (+ "
                                                               "indices + one tail logit) instead of all")
    cache_dir: Optional[str] = Field(None, description="where caches live (shared across runs, one per fingerprint); "
                                                       "default: <run_dir>/teacher_cache")
    limit_train: Optional[int] = Field(None, gt=0, description="fine-tune the teacher on a stratified subset of N "
                                                               "training examples; students still train on all "
                                                               "(a pretrained teacher needs few labels, and its "
                                                               "cached outputs cover the full set)")


class LayerCandidates(Strict):
    """Module-name patterns (fnmatch, e.g. `layer*.?`) the automatic layer choice may pick from; default: the
    blocks of each network (children of its Sequential/ModuleList containers)."""

    student: Optional[list[str]] = None
    teacher: Optional[list[str]] = None


class FeatureTerm(Strict):
    """One intermediate-layer loss, added to the logit loss: `weight * kind(pairs)`.

    `pairs` lists (student module, teacher module) paths as `named_modules()` spells them, or `auto`: the pipeline
    measures linear CKA between candidate layers on a few batches and distills the `top_k` best pairs of a
    monotonic student->teacher matching (`leankd layers RECIPE` shows the table)."""

    kind: str = Field(description="a registered feature loss kind (leankd.kd.registry.FEATURE_LOSSES)")
    weight: float = Field(1.0, gt=0, description="at: the paper's beta = 1000 is the usual weight")
    pairs: list[tuple[str, str]] | Literal["auto"]
    top_k: Optional[int] = Field(None, ge=1, description="with pairs: auto, distill only the k best pairs")
    candidates: LayerCandidates = LayerCandidates()

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        return FEATURE_LOSSES.require(v)

    @model_validator(mode="after")
    def _pairs(self) -> "FeatureTerm":
        if self.pairs == "auto" and not FEATURE_LOSSES.get(self.kind).auto_pairs:
            raise ValueError(f"{self.kind} reads attention modules, which pairs: auto (CKA over blocks) does not "
                             "choose: list the self-attention modules, e.g. [[hf.bert.encoder.layer.2.attention.self, "
                             "hf.bert.encoder.layer.5.attention.self]]")
        if self.pairs != "auto":
            if not self.pairs:
                raise ValueError("'pairs' is empty: list [student_module, teacher_module] pairs, or write 'auto'")
            if self.top_k is not None:
                raise ValueError("'top_k' applies to pairs: auto (explicit pairs are all distilled)")
        return self


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


class DistillConfig(Strict):
    """Either the classic α-mix (alpha, temperature) or an explicit list of weighted loss terms; optional
    intermediate-layer (feature) losses on top."""

    alpha: float = Field(0.9, ge=0, le=1, description="weight of KD; 1 - alpha goes to cross-entropy")
    temperature: float = Field(4.0, gt=0)
    loss: Optional[list[SerializeAsAny[LossTerm]]] = Field(
        None, description="explicit terms {kind, weight, <the kind's parameters>}; overrides alpha. Kinds: "
                          "leankd.kd.registry.LOGIT_LOSSES (ce, kd, soft_ce, mse, dkd, dist, ...)")
    transform: str = Field(RAW, description="logits before every distribution-comparing term's softmax (the alpha-"
                                            "mix's kd included, unless a term sets its own): raw, or standardize "
                                            "(logit standardization, Sun et al. 2024)")
    features: list[FeatureTerm] = Field(default_factory=list, description="layer distillation terms (hint, at, ...)")
    analysis_batches: int = Field(4, ge=1, description="batches (of batch_size) for the CKA analysis of pairs: auto")
    feature_control: bool = Field(True, description="with features: also train a logit-only KD student (same "
                                                    "budget), so the report shows what the feature losses bought")
    augment: Optional[TextAugmentConfig] = Field(None, description="text: Tang et al. augmentation, unlabeled "
                                                                    "texts the teacher labels for the KD student")
    seq: Optional[SeqDistillConfig] = Field(None, description="seq2seq: word- and sequence-level KD students "
                                                              "(defaults when unset)")
    assistants: list[ModelConfig] = Field(default_factory=list, description="progressive distillation: teacher "
                                          "-> assistants (in order, each distilled with the recipe's loss and "
                                          "train: settings) -> student; a model name or {model, kwargs}")
    assistant_mode: Literal["chain", "dense"] = Field("chain", description="chain: each model learns from the one "
                                                      "before it (TAKD); dense: from the teacher and every assistant "
                                                      "before it (DGKD)")

    @field_validator("assistants", mode="before")
    @classmethod
    def _assistant_names(cls, v: Any) -> Any:
        """`assistants: [resnet32, resnet14]` is short for [{model: resnet32}, {model: resnet14}]."""
        return [{"model": a} if isinstance(a, str) else a for a in v] if isinstance(v, list) else v

    @field_validator("loss", mode="wrap")
    @classmethod
    def _terms(cls, v: Any, handler: Any) -> Any:
        """Each term is validated by its registered kind's own parameter model."""
        return handler(parse_terms(v))

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, v: str) -> str:
        return TRANSFORMS.require(v, also=(RAW,))

    @model_validator(mode="after")
    def _needs_teacher(self) -> "DistillConfig":
        if self.loss is not None:
            check_terms(self.loss)
        return self


class MeasureConfig(Strict):
    latency_batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    latency_runs: int = Field(30, ge=30, description="timed runs per batch size (median and p90 need >= 30)")
    latency_warmup: int = Field(5, ge=0)
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for latency (default: torch's setting)")


def _registered_target(name: str) -> str:
    """A compression target is a name in the registry (leankd.compress.registry), the single source of the names:
    a target that is registered is accepted here, a typo is a recipe error naming close names and every known one.
    (Imported on use: reading it imports the heavy targets' package, which a recipe without targets never needs.)"""
    from .compress.registry import TARGETS

    return TARGETS.require(name)


class _TargetNames:
    """The JSON schema of a target name lists the registered ones (read when the schema is made)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict:
        from .compress.registry import TARGETS

        return {**handler(core_schema), "enum": TARGETS.names()}


CompressTarget = Annotated[str, AfterValidator(_registered_target), _TargetNames()]


class QATConfig(Strict):
    """Quantization-aware distillation: the KD student is fine-tuned with int8 fake quantization while the teacher
    keeps distilling (same loss as the student stage), then quantized like int8-static."""

    epochs: int = Field(2, ge=1)
    lr: Optional[float] = Field(None, gt=0, description="default: the student's lr x lr_factor")
    lr_factor: float = Field(0.02, gt=0, le=1, description="the default QAT lr as a fraction of the student's lr. "
                             "benchmarks/qat_lr.py (ResNet-8/-14, demo subset, 1 epoch): 0.02 lowered the loss and "
                             "moved accuracy most (-1.2/+1.8 points vs PTQ), 0.005/0.001 barely trained; a long QAT on "
                             "a well-trained student diverged at 0.02 once, which the divergence guard catches")
    retries: int = Field(2, ge=0, le=5, description="a QAT attempt that diverges is retried at a tenth of its lr this "
                                                     "many times; then the qat artifact is int8-static (said so)")
    divergence_margin: float = Field(2.0, ge=0, description="points: QAT has diverged when its validation accuracy "
                                                             "falls this far (or two standard errors, if more) "
                                                             "below the fake-quantized start (= int8-static)")
    loss_factor: float = Field(2.0, gt=1, description="QAT has diverged when its running training loss exceeds "
                                                       "this multiple of its starting loss (or is not finite)")
    control: bool = Field(True, description="also build qat-control: the same fine-tuning in fp32, then int8-static, "
                                            "so QAT is compared with a same-budget PTQ")


class CompressConfig(Strict):
    """Deployment artifacts made from the distilled student, each measured like the fp32 models."""

    targets: list[CompressTarget] = Field(default_factory=list, description="e.g. [fp16, int8-dynamic, int8-static]")
    max_accuracy_drop: float = Field(1.0, ge=0, description="points; an artifact that loses more is flagged")
    calibration_batches: int = Field(8, ge=1, description="training batches (64 inputs) for int8-static calibration")
    qat: QATConfig = QATConfig()

    @model_validator(mode="after")
    def _qat_references(self) -> "CompressConfig":
        """QAT is always reported beside PTQ of the same student (int8-static) and, unless turned off, beside the
        same-budget control, so its gain is measured, not assumed."""
        targets = list(dict.fromkeys(self.targets))  # drop repeats, keep order
        if "qat" in targets:
            if "int8-static" not in targets:
                targets.insert(targets.index("qat"), "int8-static")
            if self.qat.control and "qat-control" not in targets:
                targets.append("qat-control")
        object.__setattr__(self, "targets", targets)  # not `self.targets =`: validate_assignment would recurse
        return self


class Recipe(Strict):
    name: str = "run"
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    output_dir: str = Field("runs", description="run directories go under this folder")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: ModelConfig
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    baseline: bool = Field(True, description="train the student alone with the same budget for comparison")
    measure: MeasureConfig = MeasureConfig()
    compress: CompressConfig = CompressConfig()
    search: Optional[SearchConfig] = Field(None, description="what `leankd search` varies and optimizes "
                                                             "(ignored by `leankd run`)")
    seeds: Optional[list[int]] = Field(None, description="train the students once per seed, all on the same split "
                                       "(data.split_seed, else the main seed's), and report mean ± sd and the paired "
                                       "KD-vs-baseline comparison. `seed` is the main seed (unset and not listed: "
                                       "the first of these): its stages and cost/latency measurements are the run's "
                                       "usual ones")
    seeds_teacher: Literal["once", "per_seed"] = Field("once", description="with seeds: train the teacher once (with "
                                                       "the main seed) or once per seed")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _text_tokenizer(self) -> "Recipe":
        """Text: the teacher's own tokenizer unless the recipe names one (written into the resolved recipe)."""
        text = self.data.text
        if text is not None and text.tokenizer is None:
            if not self.teacher.model.startswith("hf:"):
                raise ValueError("data.text.tokenizer: the teacher is not a Hugging Face checkpoint (hf:...), so name "
                                 "the tokenizer's folder")
            object.__setattr__(text, "tokenizer", self.teacher.model[3:])
        return self

    @model_validator(mode="after")
    def _task_fits_distillation(self) -> "Recipe":
        """Settings that cannot work with this data task fail when the recipe is read, not after the teacher trained:
        the generic rules here, the task kind's own in its `check` hook (leankd/tasks/kinds/)."""
        task = self.data.task
        kind = TASK_KINDS.get(task)
        for section in sorted({s for _, k in TASK_KINDS.items() for s in k.distill_sections}):
            if section not in kind.distill_sections and getattr(self.distill, section, None) is not None:
                hint = kind.refusals.get(section)
                raise ValueError(f"distill.{section} is for data.task: {' or '.join(owners(section, 'distill'))}, "
                                 f"not {task!r}: remove it" + (f" ({hint})" if hint else ""))
        kind.check(self)
        if self.distill.assistants:
            if self.distill.features:
                raise ValueError("distill.assistants with distill.features: the layer losses pair the student with "
                                 "the teacher's layers, but with assistants the student learns from the last "
                                 "assistant: drop one of them")
            if self.teacher.cache:
                raise ValueError("teacher.cache with distill.assistants: the assistants' outputs are not cached; "
                                 "turn teacher.cache off")
            if any(a.checkpoint for a in self.distill.assistants):
                raise ValueError("distill.assistants[].checkpoint: assistants are distilled here, not loaded: "
                                 "remove the checkpoint")
        if self.teacher.limit_train is not None and self.teacher.checkpoint:
            raise ValueError("teacher.limit_train limits the teacher's fine-tuning, but teacher.checkpoint loads a "
                             "trained teacher: remove one of them")
        return self

    @model_validator(mode="after")
    def _cache_needs_logits_only(self) -> "Recipe":
        if self.teacher.cache and self.distill.features:
            raise ValueError("teacher.cache stores logits only, but distill.features needs the teacher's layers: "
                             "turn teacher.cache off, or drop the feature losses")
        return self

    @model_validator(mode="after")
    def _stages(self) -> "Recipe":
        """Check each stage's merged training settings here, so `validate` catches a bad override too."""
        for role in ("teacher", "student"):
            try:
                self.stage_train(role)
            except ValidationError as e:
                problems = "; ".join(f"{role}.train.{'.'.join(map(str, err['loc']))} = {err.get('input')!r}: "
                                     f"{err['msg']}" for err in e.errors())
                raise ValueError(problems) from None
        return self

    @model_validator(mode="after")
    def _seeds(self) -> "Recipe":
        """The seed list is checked when the recipe is read. The main seed is `seed` when listed (0 by default, so
        `--seeds 2,1,0` extends a default seed-0 run), else the first of the list unless `seed` was set."""
        if self.seeds is None:
            return self
        if not self.seeds:
            raise ValueError("seeds is empty: list the seeds to run (seeds: [0, 1, 2]) or remove it")
        negative = [s for s in self.seeds if s < 0]
        if negative:
            raise ValueError(f"seeds: {negative} are negative; seeds are integers >= 0")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds lists {repeated} more than once: each seed trains the same models, list it once")
        if self.seed not in self.seeds:
            if "seed" in self.model_fields_set:
                raise ValueError(f"seed is {self.seed} but seeds is {self.seeds}: the main seed must be one of the "
                                 f"seeds (add {self.seed} to seeds, or remove seed to make {self.seeds[0]} the main one)")
            object.__setattr__(self, "seed", self.seeds[0])
        if self.seeds_teacher == "per_seed" and self.teacher.checkpoint:
            raise ValueError("seeds_teacher: per_seed trains a teacher per seed, but teacher.checkpoint loads a "
                             "trained one: remove seeds_teacher (or the checkpoint)")
        return self

    @property
    def split_seed(self) -> int:
        """The seed that decides which examples train, validate and test (data.split_seed, else the run's)."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def stage_train(self, stage: str) -> TrainConfig:
        """Resolved training settings of a stage: the shared `train:` plus that model's overrides."""
        override = self.teacher.train if stage == "teacher" else self.student.train
        return override.apply(self.train)


# --------------------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> Recipe:
    """Read a YAML recipe; `overrides` are `dotted.key=value` strings (value parsed as YAML) applied on top."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:8]
        raise RecipeError(f"{path} is a folder, not a recipe file: give the path of a .yaml file"
                          + (f" (this folder holds {', '.join(found)})" if found else ""))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"cannot read the recipe {path} ({e.strerror or e}); check that it is a readable "
                          "file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipeError(f"{path}, line {line}: byte {data[e.start:e.start + 1].hex()!r} is not UTF-8; a recipe is "
                          "UTF-8 text: re-save it as UTF-8 (an editor's 'encoding' setting)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    if overrides and isinstance(raw, dict):
        apply_overrides(raw, overrides)
    return parse_recipe(raw, origin=str(path))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`train.epochs=1` sets raw['train']['epochs'] = 1 (the value is parsed as YAML: numbers, lists, booleans)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=5")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is not a section, so it has no key {parts[-1]!r}")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return raw


def parse_recipe(raw: Any, origin: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping with at least 'teacher' and 'student', got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, origin)) from None


def format_validation_error(e: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {e.error_count()} problem(s) in the recipe:"]
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            msg = f"unknown key (typo?); allowed here: {', '.join(allowed)}" if allowed else "unknown key (typo?)"
            lines.append(f"  - {where}: {msg}")
            continue
        if kind == "missing":
            lines.append(f"  - {where}: required field is missing")
            continue
        if not err["loc"] or isinstance(value, dict):
            lines.append(f"  - {where}: {err['msg'].removeprefix('Value error, ')}")
            continue
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = err['msg'].removeprefix('Value error, ')
        if kind == "string_type" and isinstance(value, bool):
            msg += " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the text, e.g. 'yes')"
        lines.append(f"  - {where} = {shown}: {msg}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    """Walk the schema along `loc` to list the keys valid at that place (for typo messages)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}).keys())


def _model_of(annotation: Any):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
