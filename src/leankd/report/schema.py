"""The versioned `report.json` (schema version 1): the top-level pydantic model, validation, build / load / write.

Every model forbids unknown keys at its own level so that drift between the code that measures and the code that
reports is caught at build time instead of silently dropped. Numbers may be null wherever something was not
measured; ratios derived from a null input are null, never a crash.

Validation is strict (a string "0.9" is not an accuracy, 3.0 is not a parameter count); `build_report` first
normalises numpy / torch scalars, tuples and paths into plain JSON values so producers need not care.

The parts live in their own modules (issue 24): `base` (roles, the strict base model), `run_info` (the `run` block),
`entry` (one model's entry), `figures` (ratios and the primary metric). Their names stay importable from here, the
report schema's one public address.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leankd.core.version import __version__
from leankd.errors import LeanKDError
from leankd.io import write_json_atomic
from leankd.report.base import BASELINE_ROLE, DEFAULT_LABELS, STUDENT_ROLE, TEACHER_ROLE, _Strict
from leankd.report.entry import (
    Artifact,
    Cost,
    DecodeLatency,
    Decoding,
    DeviceLatency,
    FeatureCost,
    Latency,
    LatencyStats,
    Memory,
    ModelEntry,
    ModelProbe,
    Number,
    Quality,
    QualityFlag,
    Streaming,
    TeacherCache,
    TimingNoise,
    Training,
    TransferSet,
)
from leankd.report.figures import (
    _get,
    compute_ratios,
    headline,
    latency_reliable,
    primary_gain,
    primary_value,
    report_primary,
    seeds_primary,
)
from leankd.report.run_info import (
    DatasetInfo,
    EnvironmentInfo,
    PreprocessingStep,
    PrimaryMetric,
    RunInfo,
    SplitMethod,
    UnavailableMetric,
)

__all__ = [  # defined here, and re-exported from the modules the schema was split into
    "SCHEMA_VERSION", "REPORT_FILENAME", "ReportSchemaError", "RoleRatios", "Ratios", "SeedRole", "PairedComparison",
    "SeedRuns", "Report", "format_validation_error", "validate_report", "utc_now_stamp", "build_report", "report_path",
    "load_report", "write_report",
    "BASELINE_ROLE", "DEFAULT_LABELS", "STUDENT_ROLE", "TEACHER_ROLE",
    "Artifact", "Cost", "DecodeLatency", "Decoding", "DeviceLatency", "FeatureCost", "Latency", "LatencyStats",
    "Memory", "ModelEntry", "ModelProbe", "Number", "Quality", "QualityFlag", "Streaming", "TeacherCache",
    "TimingNoise", "Training", "TransferSet",
    "compute_ratios", "headline", "latency_reliable", "primary_gain", "primary_value", "report_primary",
    "seeds_primary",
    "DatasetInfo", "EnvironmentInfo", "PreprocessingStep", "PrimaryMetric", "RunInfo", "SplitMethod",
    "UnavailableMetric",
]

SCHEMA_VERSION = 1
REPORT_FILENAME = "report.json"

_LATENCY_RATIO_KEY = re.compile(r"^latency_(cpu|cuda)_x_faster_batch_(\d+)$")
_UTC_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


class ReportSchemaError(LeanKDError, ValueError):
    """A report does not match the schema; the message lists every bad field as a dotted path."""


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
