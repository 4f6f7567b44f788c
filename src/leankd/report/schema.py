"""The versioned `report.json` (schema version 1): pydantic models, ratio computation, build / load / write.

Every model forbids unknown keys at its own level so that drift between the code that measures and the code that
reports is caught at build time instead of silently dropped. Numbers may be null wherever something was not
measured; ratios derived from a null input are null, never a crash.

Validation is strict (a string "0.9" is not an accuracy, 3.0 is not a parameter count); `build_report` first
normalises numpy / torch scalars, tuples and paths into plain JSON values so producers need not care.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leankd.core.version import __version__
from leankd.errors import LeanKDError
from leankd.io import write_json_atomic

SCHEMA_VERSION = 1
REPORT_FILENAME = "report.json"
TEACHER_ROLE = "teacher"
BASELINE_ROLE = "baseline"
STUDENT_ROLE = "student"

DEFAULT_LABELS = {TEACHER_ROLE: "Teacher", BASELINE_ROLE: "Baseline student", STUDENT_ROLE: "KD student",
                  "logit_kd": "KD student, logits only"}

_BATCH_KEY = re.compile(r"^batch_(\d+)$")
_LATENCY_RATIO_KEY = re.compile(r"^latency_(cpu|cuda)_x_faster_batch_(\d+)$")
_UTC_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

Number = Optional[Union[int, float]]  # int stays int, float stays float (no coercion between them in strict mode)


class ReportSchemaError(LeanKDError, ValueError):
    """A report does not match the schema; the message lists every bad field as a dotted path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PrimaryMetric(_Strict):
    """The quality figure a task is judged by (its plug-in declares it): the KD verdict and the primary ratios use
    it. `name` is a key of `Quality`; `label` is how the report names it."""

    name: str
    higher_is_better: bool
    label: Optional[str] = None
    also: Optional[list[str]] = None  # secondary figures shown beside it (keyword spotting: fa_fr_auc)


class PreprocessingStep(_Strict):
    """Something the data source did to the data that changes what the models see (augmentation, channel
    replication, resizing, resampling...), recorded by the source itself."""

    what: str
    by_default: bool = False  # on because of a default, not because the recipe asked for it
    warning: Optional[str] = None


class SplitMethod(_Strict):
    """How train / val / test were made, so a reader can tell whether test examples share speakers or groups with
    training ones. `groups` counts the distinct grouping units (speakers, sources) per split."""

    method: str  # e.g. "by speaker", "by group", "by clip", "by example (stratified)"
    unit: Optional[str] = None  # "speakers", "sources", ...
    groups: Optional[dict[str, int]] = None
    examples: Optional[dict[str, int]] = None
    detail: Optional[str] = None
    leak_warning: Optional[str] = None  # set when no grouping was found: test examples may share a source


class UnavailableMetric(_Strict):
    name: str
    why: str
    fix: Optional[str] = None


class DatasetInfo(BaseModel):
    """Task-specific descriptors (image size, normalization, tokenizer...) may be added, so extra keys are allowed."""

    model_config = ConfigDict(extra="allow")
    source: Optional[str] = None
    num_classes: Optional[int] = None
    classes: Optional[list[str]] = None
    train_size: Optional[int] = None
    val_size: Optional[int] = None
    eval_split: Optional[str] = None
    eval_size: Optional[int] = None
    primary_metric: Optional[PrimaryMetric] = None
    preprocessing: Optional[list[PreprocessingStep]] = None
    split_method: Optional[SplitMethod] = None
    unavailable_metrics: Optional[list[UnavailableMetric]] = None


class EnvironmentInfo(_Strict):
    device: Optional[str] = None
    torch: Optional[str] = None
    python: Optional[str] = None
    cpu: Optional[str] = None
    cpu_threads: Optional[int] = None
    gpu: Optional[str] = None
    platform: Optional[str] = None


class RunInfo(_Strict):
    name: str
    run_dir: Optional[str] = None
    seed: Optional[int] = None
    task: Optional[str] = None
    dataset: DatasetInfo = Field(default_factory=DatasetInfo)
    environment: EnvironmentInfo = Field(default_factory=EnvironmentInfo)


class Quality(_Strict):
    model_config = ConfigDict(extra="allow", strict=True)  # a task plug-in's own figures (a span's exact_match) join
    split: Optional[str] = None
    accuracy: Optional[float] = None
    macro_f1: Optional[float] = None
    loss: Optional[float] = None
    num_samples: Optional[int] = None
    per_class_accuracy: Optional[dict[str, Optional[float]]] = None
    pearson: Optional[float] = None  # regression (text_regression): Pearson r of outputs vs scores
    spearman: Optional[float] = None
    mse: Optional[float] = None
    mcc: Optional[float] = None  # text: Matthews correlation coefficient
    f1_positive: Optional[float] = None  # text, two classes: F1 of class 1 (GLUE's F1)
    # binary keyword spotting: area under the FR-vs-FA curve (lower is better), FR rate at FA rate `far_target`
    fa_fr_auc: Optional[float] = None
    frr_at_far: Optional[float] = None
    far_target: Optional[float] = None
    # seq2seq (accuracy = sequence accuracy, greedy): token / sequence error rates (fractions; PER / WER for G2P),
    # greedy and with beam search of width `beam`; BLEU / chrF (0-100, sacrebleu) for whitespace-tokenized targets
    ter: Optional[float] = None
    ser: Optional[float] = None
    ter_beam: Optional[float] = None
    ser_beam: Optional[float] = None
    beam: Optional[int] = None
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    bleu_beam: Optional[float] = None
    chrf_beam: Optional[float] = None
    # classification: share of predictions in the most predicted class; of the most frequent true class (a guess's)
    top_prediction_share: Optional[float] = None
    majority_class_share: Optional[float] = None

    @model_validator(mode="after")
    def _task_figures(self) -> "Quality":  # a task's own figures are numbers; a near-miss of a known key is a typo
        bad = [k for k, v in (self.__pydantic_extra__ or {}).items() if not isinstance(v, (int, float, type(None)))
               or difflib.get_close_matches(k, list(type(self).model_fields), n=1, cutoff=0.9)]
        if bad:
            raise ValueError(f"unknown key(s) {bad} (a typo of a known key, or not a number)")
        return self


class Cost(_Strict):
    params: Optional[int] = None
    trainable_params: Optional[int] = None
    size_mb: Optional[float] = None
    size_bytes: Optional[int] = None
    macs: Number = None  # per sample
    flops: Number = None  # per sample


class LatencyStats(_Strict):
    """Timings of one batch size (`measure.timing`). Since the robust timer, `median_ms` is the median over the
    interleaved rounds of each round's fastest block (older reports: the median of single calls); the others are
    over all blocks. `spread` = interquartile range / median of the blocks, `round_spread` = slowest / fastest of the
    per-round fastest blocks, `round_ms[r]` = round r's block means (ms per call)."""

    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    runs: Optional[int] = None
    pooled_median_ms: Optional[float] = None
    spread: Optional[float] = None
    round_spread: Optional[float] = None
    round_ms: Optional[list[list[float]]] = None


class DeviceLatency(BaseModel):
    """`{"threads": 2, "batch_1": {...}, "batch_64": {...}}`: any `batch_<n>` key is allowed, nothing else."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, Optional[LatencyStats]] = Field(init=False)

    threads: Optional[int] = None
    device_name: Optional[str] = None  # GPU name on the cuda block
    # the noise contract (read by `leankd search`): reliable False -> the figures may be spoiled by machine noise,
    # `noise` says why; None/absent (reports from before the robust timer) = not assessed, read as reliable
    reliable: Optional[bool] = None
    noise: Optional[list[str]] = None
    load_avg: Optional[list[float]] = None  # os.getloadavg() (1, 5, 15 min) when the table was timed
    interop_threads: Optional[int] = None
    cpu_count: Optional[int] = None
    rounds: Optional[int] = None
    method: Optional[str] = None

    @model_validator(mode="after")
    def _only_batch_keys(self) -> "DeviceLatency":
        bad = [k for k in (self.__pydantic_extra__ or {}) if not _BATCH_KEY.match(k)]
        if bad:
            raise ValueError(f"unknown key(s) {bad}; allowed: {', '.join(repr(f) for f in type(self).model_fields)} "
                             "and 'batch_<n>' (e.g. 'batch_1', 'batch_64')")
        return self

    def batches(self) -> dict[int, Optional[LatencyStats]]:
        """Batch size -> stats, sorted by batch size."""
        out = {int(_BATCH_KEY.match(k).group(1)): v for k, v in (self.__pydantic_extra__ or {}).items()}
        return dict(sorted(out.items()))


class Latency(_Strict):
    cpu: Optional[DeviceLatency] = None
    cuda: Optional[DeviceLatency] = None


class Memory(_Strict):
    inference_peak_mb: Optional[float] = None
    inference_delta_mb: Optional[float] = None
    kind: Optional[str] = None
    batch_size: Optional[int] = None
    model_memory_mb: Optional[float] = None  # parameters + peak activations for one input (tensor bytes)


class TimingNoise(_Strict):
    """What every timing table carries since the robust timer (`measure.timing`): the noise verdict and the machine
    state it was timed in. All optional: older reports have none of it (absent `reliable` = reliable)."""

    reliable: Optional[bool] = None
    noise: Optional[list[str]] = None
    load_avg: Optional[list[float]] = None
    threads: Optional[int] = None
    interop_threads: Optional[int] = None
    cpu_count: Optional[int] = None


class FeatureCost(TimingNoise):
    """One step (forward, teacher, loss, backward) with the logit loss alone or plus one feature term. `extra_mb`
    None with `memory_kind` "not measurable: ..." when no memory figure could be taken."""

    loss: str
    ms_per_step: Optional[float] = None
    extra_ms_per_step: Optional[float] = None
    peak_mb: Optional[float] = None
    extra_mb: Optional[float] = None  # extra at the step's peak: often 0 (a term's tensors fit under the peak)
    held_mb: Optional[float] = None  # tensor bytes alive when the loss is computed (kept for backward)
    extra_held_mb: Optional[float] = None  # what the feature term keeps alive for backward
    memory_kind: Optional[str] = None


class TeacherCache(_Strict):
    """The teacher-logit cache a KD stage read instead of running the teacher (kd.cache)."""

    path: str
    views: int
    samples: int
    classes: int
    top_k: Optional[int] = None  # top-k logits + indices + tail logit per sample instead of every logit
    disk_mb: float
    build_s: Optional[float] = None  # None: an existing cache was reused (built by an earlier stage or run)
    reused: bool = False
    augmented: Optional[bool] = None  # False: the task does not augment (text), so one view is all there is


class TransferSet(_Strict):
    """Text augmentation for distillation (Tang et al.): unlabeled texts added to what the KD student trains on."""

    original: int  # labeled training texts
    augmented: int  # new unlabeled texts (repeats and unchanged copies dropped)
    copies_tried: int
    settings: dict


class Training(_Strict):
    epochs: Optional[int] = None
    wall_time_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    memory_kind: Optional[str] = None
    energy_j: Optional[float] = None
    energy_source: Optional[str] = None
    loss: Optional[str] = None
    precision: Optional[str] = None
    device: Optional[str] = None
    feature_costs: Optional[list[FeatureCost]] = None  # layer distillation: what each feature loss costs per step
    teacher_cache: Optional[TeacherCache] = None  # offline KD: the cached teacher logits this stage trained from
    transfer_set: Optional[TransferSet] = None  # text: augmented, unlabeled texts the KD student also trained on
    seq_kd_data: Optional[dict] = None  # seq2seq: the teacher-decoded training pairs a sequence-level student used
    speedups: Optional[list[str]] = None  # throughput switches the stage trained with (train/speed.py)
    speedup_notes: Optional[list[str]] = None  # requested switches that did not apply, and why
    batch_size: Optional[int] = None
    steps: Optional[int] = None  # optimizer steps taken over all epochs


class Artifact(_Strict):
    """A deployment artifact derived from a trained model (fp16, int8, ONNX...): what was done and how it went."""

    target: str  # e.g. "fp16", "int8-dynamic", "int8-static", "onnx"
    base_role: str  # the fp32 model it was made from, e.g. "student"
    format: str  # "torch" or "onnx"
    path: str  # relative to the run dir
    quantized: Optional[list[str]] = None  # module paths / op types that run in int8
    left_in_float: Optional[dict[str, str]] = None  # module or op -> why it stayed in float
    max_abs_diff: Optional[float] = None  # against the fp32 model on one eval batch
    accuracy_drop_points: Optional[float] = None
    max_drop_points: Optional[float] = None  # the recipe's threshold
    flagged: bool = False  # accuracy dropped more than the threshold
    notes: list[str] = Field(default_factory=list)
    # added to a finished run (`leankd compress`/`export` without --remeasure): the base model's latency re-timed
    # interleaved with this artifact; its x-faster ratios against the base use it instead of the base's own row
    reference_latency: Optional[Latency] = None


class Streaming(TimingNoise):
    """Chunk-by-chunk inference on the CPU (keyword spotting), features included."""

    chunk_ms: Optional[float] = None
    mode: Optional[str] = None  # "incremental" (GRU state carried) or "window" (recomputed over a sliding window)
    median_ms: Optional[float] = None  # robust figure (median of per-round fastest blocks), as LatencyStats
    p90_ms: Optional[float] = None
    min_ms: Optional[float] = None
    pooled_median_ms: Optional[float] = None
    spread: Optional[float] = None
    round_spread: Optional[float] = None
    runs: Optional[int] = None
    real_time_factor: Optional[float] = None  # compute time per chunk / chunk duration (< 1: faster than real time)


class DecodeLatency(_Strict):
    search: str  # "greedy" or "beam<k>"
    batch_size: int
    median_batch_ms: float  # robust figure (median of per-round fastest blocks) since the robust timer
    ms_per_sequence: float
    spread: Optional[float] = None
    round_spread: Optional[float] = None


class Decoding(TimingNoise):
    """Seq2seq: CPU wall time of decoding whole sequences (encoder + every decoder step), per sequence."""

    beam: int
    length_penalty: float
    max_len: int
    runs: Optional[int] = None
    interleaved: Optional[bool] = None  # timed round-robin with the run's other models and artifacts
    latency: list[DecodeLatency] = Field(default_factory=list)


class ModelProbe(_Strict):
    """What one forward of a probe batch shows about a model (measure.probe): how far it downsamples its input."""

    input_size: Optional[list[int]] = None  # spatial size of the input, e.g. [28, 28]
    feature_size: Optional[list[int]] = None  # spatial size of the last feature map before global pooling
    total_stride: Optional[int] = None  # input size / last feature map size, measured on a large probe input
    batchnorm_layers: Optional[int] = None


class QualityFlag(_Strict):
    """A result that cannot be right (report.sanity): what was seen, and the likely causes the run's data shows."""

    kind: str  # "at_chance" or "collapsed"
    message: str
    causes: list[str] = Field(default_factory=list)


class ModelEntry(_Strict):
    role: str
    label: Optional[str] = None
    architecture: Optional[str] = None
    origin: Optional[str] = None
    quality: Optional[Quality] = None
    cost: Optional[Cost] = None
    latency: Optional[Latency] = None
    memory: Optional[Memory] = None
    training: Optional[Training] = None
    history: Optional[str] = None  # JSON-lines file, relative to the run dir
    artifact: Optional[Artifact] = None  # set for compressed/exported models
    streaming: Optional[Streaming] = None
    decoding: Optional[Decoding] = None
    probe: Optional[ModelProbe] = None
    quality_flags: Optional[list[QualityFlag]] = None

    @field_validator("history")
    @classmethod
    def _history_relative(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and Path(v).is_absolute():
            raise ValueError(f"history must be a path relative to the run dir, got absolute path {v!r}")
        return v


class RoleRatios(BaseModel):
    """One role versus the teacher. CUDA (and other batch sizes) appear as `latency_<dev>_x_faster_batch_<n>`."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, Optional[float]] = Field(init=False)

    size_x_smaller: Optional[float] = None
    params_x_fewer: Optional[float] = None
    macs_x_fewer: Optional[float] = None
    memory_x_less: Optional[float] = None  # model memory: parameters + peak activations for one input
    latency_cpu_x_faster_batch_1: Optional[float] = None
    latency_cpu_x_faster_batch_64: Optional[float] = None
    accuracy_retention_pct: Optional[float] = None
    accuracy_delta_points: Optional[float] = None
    # latency ratios set to null because a timing was flagged unreliable, e.g. ["latency_cpu_x_faster_batch_1"]
    unreliable_latency: Optional[list[str]] = None
    # the task's primary metric (run.dataset.primary_metric): change versus the reference in points, signed so that
    # positive is better whatever the metric's direction (a lower false-rejection rate is a positive change)
    primary_delta_points: Optional[float] = None

    @model_validator(mode="after")
    def _only_latency_keys(self) -> "RoleRatios":
        bad = [k for k in (self.__pydantic_extra__ or {}) if not _LATENCY_RATIO_KEY.match(k)]
        if bad:
            raise ValueError(f"unknown key(s) {bad}; extra keys must look like 'latency_cuda_x_faster_batch_1'")
        return self


class Ratios(_Strict):
    vs_teacher: dict[str, RoleRatios] = Field(default_factory=dict)
    vs_base: dict[str, RoleRatios] = Field(default_factory=dict)  # artifacts vs the fp32 model they came from
    kd_gain_points: Optional[float] = None
    kd_gain_macro_f1_points: Optional[float] = None
    # KD gain on the task's primary metric, in points, positive = KD better (also for lower-is-better metrics)
    primary_metric: Optional[str] = None
    kd_gain_primary_points: Optional[float] = None


class SeedRole(_Strict):
    """One role's value of `SeedRuns.metric` (a fraction, like `quality.<metric>`) per seed, aligned with
    `SeedRuns.seeds`."""
    values: list[Optional[float]]
    n: int
    mean: Optional[float] = None
    sd: Optional[float] = None  # sample standard deviation (n - 1); null for one value


class PairedComparison(_Strict):
    """A KD student against its `reference` (the baseline), seed by seed, in points, + = the student is better: the
    student minus the reference, or the reference minus the student when lower is better; t interval and tests."""
    reference: str
    differences_points: list[float]
    n: int
    mean_points: Optional[float] = None
    sd_points: Optional[float] = None
    ci_level: float
    ci_low_points: Optional[float] = None
    ci_high_points: Optional[float] = None
    t: Optional[float] = None
    df: Optional[int] = None
    p_value: Optional[float] = None  # paired t-test, two-sided
    better: int
    worse: int
    ties: int
    sign_p_value: Optional[float] = None  # exact two-sided sign test, ties dropped


class SeedRuns(_Strict):
    """`seeds:` runs: the models of every seed on one split (`models` holds the main seed's)."""
    seeds: list[int]
    main_seed: int
    split_seed: int
    # the task's primary metric (a key of `Quality`); older reports: accuracy (pearson), higher is better
    metric: str
    higher_is_better: Optional[bool] = None
    label: Optional[str] = None
    teacher: str  # once | per_seed
    roles: dict[str, SeedRole]
    paired: dict[str, PairedComparison] = Field(default_factory=dict)
    note: Optional[str] = None


class Report(_Strict):
    schema_version: int
    leankd_version: str
    created_utc: str
    run: RunInfo
    models: dict[str, ModelEntry]
    ratios: Ratios = Field(default_factory=Ratios)
    notes: list[str] = Field(default_factory=list)
    seeds: Optional[SeedRuns] = None  # runs over several seeds (optional: older reports have none)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"this leankd writes and reads schema_version {SCHEMA_VERSION}, got {v}")
        return v

    @field_validator("created_utc")
    @classmethod
    def _utc_stamp(cls, v: str) -> str:
        if not _UTC_STAMP.match(v):
            raise ValueError(f"expected an ISO-8601 UTC time like '2026-11-23T10:00:00Z', got {v!r}")
        return v

    @model_validator(mode="after")
    def _roles_match_keys(self) -> "Report":
        for key, entry in self.models.items():
            if entry.role != key:
                raise ValueError(f"models[{key!r}].role is {entry.role!r}; it must equal its key {key!r}")
        return self


def _to_plain(obj: Any) -> Any:
    """Plain JSON values: numpy/torch scalars -> Python numbers, tuples -> lists, Paths -> str, models -> dicts."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalar
        return obj.item()
    return obj  # let validation name it


def format_validation_error(err: ValidationError, what: str = "report") -> str:
    lines = [f"{what} does not match report schema version {SCHEMA_VERSION} ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (not in the schema)")
            continue
        inp = e.get("input")
        shown = repr(inp)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  - {loc}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def validate_report(report: Any, what: str = "report") -> dict:
    """Validate a report dict against the schema and return it as a plain (JSON-ready) dict."""
    try:
        model = Report.model_validate(_to_plain(report))
    except ValidationError as e:
        raise ReportSchemaError(format_validation_error(e, what)) from None
    out = model.model_dump(mode="json")
    if out.get("seeds") is None:  # a one-seed report keeps the shape it always had
        out.pop("seeds", None)
    return out


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, BaseModel):
            d = getattr(d, k, None)
        elif isinstance(d, dict):
            d = d.get(k)
        else:
            return None
        if d is None:
            return None
    return d


def _num(x: Any) -> Optional[float]:
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ratio(num: Any, den: Any) -> Optional[float]:
    a, b = _num(num), _num(den)
    if a is None or b is None or b <= 0 or a < 0:
        return None
    return round(a / b, 4)


def _latency_batches(entry: Any, device: str) -> dict[str, Any]:
    lat = _get(entry, "latency", device)
    if isinstance(lat, BaseModel):
        lat = lat.model_dump()
    if not isinstance(lat, dict):
        return {}
    return {k: v for k, v in lat.items() if _BATCH_KEY.match(k)}


def _batch_sort_key(k: str) -> int:
    return int(_BATCH_KEY.match(k).group(1))


def latency_reliable(entry: Any, device: str = "cpu") -> bool:
    """False only when the entry's latency block on `device` says `reliable: false` (absent = reliable)."""
    return _get(entry, "latency", device, "reliable") is not False


def primary_value(entry: Any, primary: Optional[dict]) -> Optional[float]:
    """The entry's value of the task's primary metric (None when the task declared none or it was not measured)."""
    name = _get(primary, "name")
    return _num(_get(entry, "quality", name)) if name else None


def report_primary(report: Any) -> dict:
    """The primary metric a report is judged by (`{name, higher_is_better, label, ...}`): `run.dataset.primary_metric`,
    or, for a report written before tasks declared one, its headline figure: accuracy (Pearson r for regression)."""
    primary = _get(report, "run", "dataset", "primary_metric")
    if isinstance(primary, BaseModel):
        primary = primary.model_dump(exclude_none=True)
    if isinstance(primary, dict) and primary.get("name"):
        return primary
    models = _get(report, "models") or {}
    regression = any(_get(e, "quality", "accuracy") is None and _num(_get(e, "quality", "pearson")) is not None
                     for e in models.values())
    if regression:
        return {"name": "pearson", "higher_is_better": True, "label": "Pearson r"}
    return {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}


def seeds_primary(report: Any) -> Optional[dict]:
    """The metric a report's `seeds` block compares, as `{name, higher_is_better, label}` (None without seeds): the
    primary metric for reports that record its direction, else (older reports) accuracy or Pearson r."""
    seeds = _get(report, "seeds")
    name = _get(seeds, "metric")
    if not name:
        return None
    label = _get(seeds, "label") or ("Pearson r" if name == "pearson" else name)
    return {"name": name, "higher_is_better": _get(seeds, "higher_is_better") is not False, "label": label}


def primary_gain(better: Any, worse: Any, primary: Optional[dict]) -> Optional[float]:
    """`better` minus `worse` on the primary metric in points (x100), signed so positive means `better` is better."""
    a, b = primary_value(better, primary), primary_value(worse, primary)
    if a is None or b is None:
        return None
    sign = 1.0 if _get(primary, "higher_is_better") is not False else -1.0
    return round(100.0 * sign * (a - b), 4)


def _versus(ref: Optional[dict], entry: dict, primary: Optional[dict] = None) -> dict[str, Any]:
    """`entry` against a reference model: × smaller / fewer / faster and accuracy retention and delta."""
    r: dict[str, Optional[float]] = {
        "size_x_smaller": _ratio(_get(ref, "cost", "size_bytes"), _get(entry, "cost", "size_bytes")),
        "params_x_fewer": _ratio(_get(ref, "cost", "params"), _get(entry, "cost", "params")),
        "macs_x_fewer": _ratio(_get(ref, "cost", "macs"), _get(entry, "cost", "macs")),
        "memory_x_less": _ratio(_get(ref, "memory", "model_memory_mb"), _get(entry, "memory", "model_memory_mb")),
        "latency_cpu_x_faster_batch_1": None,
        "latency_cpu_x_faster_batch_64": None,
    }
    noisy = []
    for device in ("cpu", "cuda"):
        t_b, s_b = _latency_batches(ref, device), _latency_batches(entry, device)
        unreliable = not latency_reliable(ref, device) or not latency_reliable(entry, device)
        for key in sorted(set(t_b) & set(s_b), key=_batch_sort_key):
            ratio = _ratio(_get(t_b[key], "median_ms"), _get(s_b[key], "median_ms"))
            if unreliable and ratio is not None:  # not a fact: left out, and named so the report can say why
                noisy.append(f"latency_{device}_x_faster_{key}")
                ratio = None
            r[f"latency_{device}_x_faster_{key}"] = ratio
    if noisy:
        r["unreliable_latency"] = noisy
    t_acc, s_acc = headline(ref), headline(entry)
    r["accuracy_retention_pct"] = _ratio(s_acc, t_acc)
    if r["accuracy_retention_pct"] is not None:
        r["accuracy_retention_pct"] = round(100.0 * s_acc / t_acc, 4)
    r["accuracy_delta_points"] = round(100.0 * (s_acc - t_acc), 4) if s_acc is not None and t_acc is not None else None
    if primary is not None:
        r["primary_delta_points"] = primary_gain(entry, ref, primary)
    return r


def compute_ratios(models: dict, primary: Optional[dict] = None) -> dict:
    """Every non-teacher role versus the teacher, every artifact versus the fp32 model it came from, plus the KD
    gain of `student` over `baseline` (in points). `primary` (the task's `run.dataset.primary_metric`) adds the same
    comparisons on that metric, signed so that positive is better.

    Missing, null, non-finite or zero inputs make that ratio null; nothing here raises on incomplete data.
    """
    models = models or {}
    teacher = models.get(TEACHER_ROLE)
    vs_teacher = {role: _versus(teacher, entry, primary) for role, entry in models.items() if role != TEACHER_ROLE}
    vs_base = {}
    for role, entry in models.items():
        base = _get(entry, "artifact", "base_role")
        if base is not None:
            ref = models.get(base)
            timed_with = _get(entry, "artifact", "reference_latency")  # the base re-timed beside this artifact
            if isinstance(ref, dict) and timed_with is not None:
                ref = {**ref, "latency": timed_with}
            vs_base[role] = _versus(ref, entry, primary)

    def gain(metric: str) -> Optional[float]:
        s = _num(_get(models.get(STUDENT_ROLE), "quality", metric))
        b = _num(_get(models.get(BASELINE_ROLE), "quality", metric))
        return round(100.0 * (s - b), 4) if s is not None and b is not None else None

    s, b = headline(models.get(STUDENT_ROLE)), headline(models.get(BASELINE_ROLE))
    return {"vs_teacher": vs_teacher, "vs_base": vs_base,
            "kd_gain_points": round(100.0 * (s - b), 4) if s is not None and b is not None else None,
            "kd_gain_macro_f1_points": gain("macro_f1"),
            **({"primary_metric": _get(primary, "name"),
                "kd_gain_primary_points": primary_gain(models.get(STUDENT_ROLE), models.get(BASELINE_ROLE), primary)}
               if primary is not None else {})}


def headline(entry: Optional[dict]) -> Optional[float]:
    """The quality figure that ratios, gains and drops compare: accuracy, or Pearson r for regression tasks (the
    `accuracy_*` ratio keys and `kd_gain_points` then hold Pearson r, in points of 1/100)."""
    acc = _num(_get(entry, "quality", "accuracy"))
    return acc if acc is not None else _num(_get(entry, "quality", "pearson"))


def _leankd_version() -> str:
    return __version__  # from leankd.core.version: `import leankd` here would import the API, which imports us


def utc_now_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(run: dict, models: dict, notes: Optional[list[str]] = None, seeds: Optional[dict] = None) -> dict:
    """Assemble, compute ratios, validate and return a plain report dict (schema version 1).

    `run` and `models` may be dicts or the pydantic models above. Notes are kept in order, duplicates dropped.
    """
    run_plain = _to_plain(run)
    models_plain = _to_plain(models)
    if not isinstance(models_plain, dict):
        raise ReportSchemaError(f"models must be a mapping role -> entry, got {type(models).__name__}")
    seen: set[str] = set()
    clean_notes = []
    for n in notes or []:
        n = str(n)
        if n not in seen:
            seen.add(n)
            clean_notes.append(n)
    report = {
        "schema_version": SCHEMA_VERSION,
        "leankd_version": _leankd_version(),
        "created_utc": utc_now_stamp(),
        "run": run_plain,
        "models": models_plain,
        "ratios": compute_ratios(models_plain, _get(run_plain, "dataset", "primary_metric")),
        "notes": clean_notes,
    }
    if seeds is not None:
        report["seeds"] = _to_plain(seeds)
    return validate_report(report)


def report_path(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    return p if p.suffix == ".json" and not p.is_dir() else p / REPORT_FILENAME


def load_report(run_dir: str | Path) -> dict:
    """Read and validate `<run_dir>/report.json` (a path to the json file itself also works)."""
    path = report_path(run_dir)
    if not path.is_file():
        where = "directory does not exist" if not path.parent.exists() else "directory has no report.json"
        raise LeanKDError(
            f"no report found: expected {path} ({where}). `leankd run` creates it at the end of a run; "
            f"pass the run directory of a finished run."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeanKDError(f"{path} is not readable JSON ({e}); re-run `leankd run` to regenerate it.") from None
    if not isinstance(data, dict):
        raise LeanKDError(f"{path} should hold a JSON object, found {type(data).__name__}.")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise LeanKDError(
            f"{path} has schema_version {version}, but this leankd ({_leankd_version()}) reads up to "
            f"{SCHEMA_VERSION}; upgrade leankd to read it."
        )
    try:
        return validate_report(data, what=str(path))
    except ReportSchemaError as e:
        raise ReportSchemaError(f"{e}\nRe-run `leankd run` (or `leankd report`) to regenerate it.") from None


def write_report(run_dir: str | Path, report: dict) -> Path:
    """Validate and atomically write `<run_dir>/report.json`; returns its path. Invalid reports are never written."""
    plain = validate_report(report)
    path = Path(run_dir) / REPORT_FILENAME
    write_json_atomic(path, plain)
    return path
