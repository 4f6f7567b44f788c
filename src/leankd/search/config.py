"""The recipe's `search:` section: what `leankd search` varies, what it optimizes, what it must respect.

The space is keyed by dotted recipe paths (`distill.temperature`, `student.kwargs.width`, `train.lr`,
`distill.features.0.weight`), so a trial *is* the starting recipe with a few values changed, and the report can
show each candidate as a recipe diff. One pseudo-path, `distill.family`, picks the logit-loss family (any registered loss
kind that learns from the teacher: kd, soft_ce, mse, dkd, dist, ...) that `distill.alpha` / `distill.temperature`
parameterize; `distill.transform` (raw / standardize) is an ordinary path.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dimension(_Strict):
    """A range (`low`/`high`, optional `log` and `step`; int when both bounds are ints) or a list of `choices`."""

    low: Optional[float | int] = None
    high: Optional[float | int] = None
    log: bool = False
    step: Optional[float | int] = Field(None, gt=0)
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a dimension needs low and high (a range) or choices (a list)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples one or the other)")
        return self

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int) \
            and not isinstance(self.low, bool) and (self.step is None or isinstance(self.step, int))


class Objective(_Strict):
    metric: str = Field(..., description="a candidate metric (accuracy, macs, params, size_mb, latency_ms, "
                                         "train_time_s, ...) or a dotted path into a report model entry")
    direction: Literal["maximize", "minimize"]


class Constraint(_Strict):
    metric: str
    max: Optional[float] = None
    min: Optional[float] = None

    @model_validator(mode="after")
    def _bound(self) -> "Constraint":
        if self.max is None and self.min is None:
            raise ValueError(f"constraint on {self.metric!r} needs max or min")
        return self


class SearchConfig(_Strict):
    space: dict[str, Dimension] = Field(..., description="dotted recipe path -> range or choices")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="accuracy", direction="maximize"),
                                 Objective(metric="macs", direction="minimize")])
    constraints: list[Constraint] = Field(default_factory=list)
    trials: int = Field(24, ge=1, description="first-rung trials (each a student trained at the cheap budget)")
    time_budget_min: Optional[float] = Field(None, gt=0, description="stop starting first-rung trials when the "
                                                                     "rest of the search would not fit")
    sampler: Literal["auto", "tpe", "nsga2", "random"] = Field(
        "auto", description="auto: TPE (multivariate, MOTPE for several objectives) - sample-efficient at tens of "
                            "trials, where NSGA-II's first generation is still random")
    rung_fraction: float = Field(0.34, gt=0, le=1, description="first rung: this share of the trial's epochs")
    promote_max: Optional[int] = Field(None, ge=1, description="most candidates promoted to the full budget "
                                                               "(default: a third of the trials)")
    full_seeds: int = Field(1, ge=1, description="seeds per promoted candidate at the full budget; the front and "
                                                 "the choice of what to confirm use their mean (2 keeps one lucky "
                                                 "or unlucky seed from deciding)")
    confirm_top: int = Field(2, ge=0, description="best front candidates re-run with extra seeds, beside a "
                                                  "same-budget baseline of the same student")
    confirm_seeds: int = Field(2, ge=1, description="extra seeds per confirmed candidate (mean and spread)")
    seed: int = Field(0, description="the sampler's seed")
