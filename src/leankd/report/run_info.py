"""The `run` block of `report.json`: what was run, on which data and machine. The data source records its own
facts here (split method, preprocessing, the task's primary metric), so a reader can judge the numbers that follow.
Split from `schema` (issue 24) so that each part of the report schema is one short module."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from leankd.report.base import _Strict


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
