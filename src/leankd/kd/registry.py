"""The registries of distillation methods: logit losses, feature (layer) losses and logit transforms.

Each method is one file in `leankd/kd/methods/` that registers a `LossKind` (its name, its own pydantic parameter
model with defaults, and how to build the `Loss`). Everything else reads these registries: the recipe validates
`distill.loss` / `distill.features` terms with the registered parameter models and lists the registered names in
its errors, the pipeline builds a loss in one call (`build_logit_loss`), `leankd search` takes its
`distill.family` choices from here. A kind that is not registered is a recipe error; there is no fallback.

Why parameter models per kind instead of one flat term: a DKD term has alpha, beta and a warm-up, a KD term a
temperature, CE a label smoothing; with one model per kind a misplaced key is an "unknown key" error that lists
what this kind takes, and defaults are written once, in the plug-in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from pydantic import Field, ValidationError, field_validator

from ..core.params import Strict
from ..core.registry import Registry
from .losses import Loss, LossInputs

LOGIT_LOSSES: Registry["LossKind"] = Registry("loss kind", discover="leankd.kd.methods")
FEATURE_LOSSES: Registry["FeatureKind"] = Registry("feature loss kind", discover="leankd.kd.methods")
TRANSFORMS: Registry["LogitTransform"] = Registry("logit transform", discover="leankd.kd.methods")

RAW = "raw"  # the identity transform: logits as the models give them


class LossTerm(Strict):
    """One weighted term of `distill.loss`. A kind's parameter model subclasses this with `kind: Literal[name]`
    and its own fields (None = take the recipe-wide default, e.g. distill.temperature)."""

    kind: str
    weight: float = Field(1.0, ge=0)


class DistributionTerm(LossTerm):
    """A term that compares the two models' class distributions at a temperature; its logits may be transformed
    first (`transform: standardize`, logit standardization)."""

    temperature: Optional[float] = Field(None, gt=0, description="default: distill.temperature")
    transform: Optional[str] = Field(None, description="logits before the softmax: raw, or a registered transform "
                                                       "(e.g. standardize); default: distill.transform")

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else TRANSFORMS.require(v, also=(RAW,))


@dataclass
class BuildContext:
    """What a term may take from the rest of the recipe: the defaults its None fields fall back to, and how the
    task learns from labels alone (`supervised`: cross-entropy, or the squared error for a regression task)."""

    temperature: float = 4.0
    label_smoothing: float = 0.0
    transform: str = RAW
    regression: bool = False
    supervised: Optional[Callable[[float], Loss]] = None


@dataclass
class LossKind:
    """A registered logit loss. `params` validates its recipe term; `build(term, ctx)` makes the (unweighted) Loss.

    `uses_teacher`: it learns from the teacher (at least one such term is required, and `leankd search` offers it
    as a `distill.family`). `compares_distributions`: it needs class logits (refused for a one-output regression
    task)."""

    name: str
    params: type[LossTerm]
    build: Callable[[Any, BuildContext], Loss]
    uses_teacher: bool = True
    compares_distributions: bool = True
    summary: str = ""

    def takes(self, field: str) -> bool:
        return field in self.params.model_fields


@dataclass
class FeatureKind:
    """A registered layer loss: `make(pairs) -> Loss`. `auto_pairs`: whether `pairs: auto` (CKA over blocks) can
    choose its layers (not for losses that read attention modules)."""

    name: str
    make: Callable[[list[tuple[str, str]]], Loss]
    auto_pairs: bool = True
    summary: str = ""


@dataclass
class LogitTransform:
    """A function applied to teacher and student logits (each on its own) before a distribution-comparing loss."""

    name: str
    apply: Callable[[Any], Any]
    tag: str  # appended to the loss's description, e.g. kd(T=4,ls): part of the stage fingerprint
    summary: str = ""


def register_loss(kind: LossKind) -> LossKind:
    params_kind = kind.params.model_fields["kind"].annotation
    if params_kind is not Literal[kind.name]:  # type: ignore[valid-type]
        raise TypeError(f"{kind.params.__name__}.kind must be Literal[{kind.name!r}] to register loss kind "
                        f"{kind.name!r}")
    return LOGIT_LOSSES.add(kind.name, kind, origin=f"{kind.params.__module__}.{kind.params.__qualname__}")


def register_feature(kind: FeatureKind) -> FeatureKind:
    return FEATURE_LOSSES.add(kind.name, kind, origin=_where(kind.make))


def register_transform(transform: LogitTransform) -> LogitTransform:
    return TRANSFORMS.add(transform.name, transform, origin=_where(transform.apply))


def _where(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# recipe side -----------------------------------------------------------------------------------------------------
def parse_terms(value: Any) -> Any:
    """`distill.loss` as given (a list of dicts) -> a list of each kind's own parameter model. Errors keep their
    place (`distill.loss.1.temperature`) and an unknown key lists what that kind takes."""
    if not isinstance(value, list):
        return value
    out, errors = [], []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "kind" not in item:
            out.append(item)  # the base model reports the missing kind / wrong type
            continue
        name = item["kind"]
        if name not in LOGIT_LOSSES:
            errors.append(_error((i, "kind"), name, LOGIT_LOSSES.unknown_message(name)))
            continue
        kind = LOGIT_LOSSES.get(name)
        try:
            out.append(kind.params.model_validate(item))
        except ValidationError as e:
            for err in e.errors():
                loc = (i, *err["loc"])
                if err["type"] == "extra_forbidden":
                    errors.append(_error(loc, err["input"], _not_a_parameter(str(err["loc"][-1]), kind)))
                else:
                    errors.append({"type": err["type"], "loc": loc, "input": err["input"], "ctx": err.get("ctx", {})})
    if errors:
        raise ValidationError.from_exception_data("LossTerm", errors)
    return out


def _not_a_parameter(key: str, kind: LossKind) -> str:
    takes = [f for f in kind.params.model_fields if f != "kind"]
    others = [k.name for _, k in LOGIT_LOSSES.items() if k.takes(key)]
    hint = f"; {key!r} is a parameter of {', '.join(others)}" if others else ""
    return f"{kind.name} takes {', '.join(takes)}, not {key!r}{hint}"


def _error(loc: tuple, value: Any, message: str) -> dict:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}


def check_terms(terms: list[LossTerm]) -> None:
    """Rules over a whole `distill.loss` list (its terms are already valid one by one)."""
    if not terms:
        raise ValueError("'loss' is an empty list: give at least one term, e.g. [{kind: kd, temperature: 4}]")
    if sum(t.weight for t in terms) <= 0:
        raise ValueError("every loss term has weight 0: give at least one term a positive weight")
    if not any(LOGIT_LOSSES.get(t.kind).uses_teacher for t in terms):
        teachers = [name for name, k in LOGIT_LOSSES.items() if k.uses_teacher]
        raise ValueError(f"no loss term learns from the teacher ({', '.join(sorted({t.kind for t in terms}))} only), "
                         f"so the teacher is never used: add one of {', '.join(teachers)}")


def distribution_kinds(terms: list[LossTerm]) -> list[str]:
    """The kinds among `terms` that compare class distributions (refused for a regression task)."""
    return [t.kind for t in terms if LOGIT_LOSSES.get(t.kind).compares_distributions]


def families() -> list[str]:
    """Loss kinds `leankd search` may pick as `distill.family` (alpha x family + (1 - alpha) x cross-entropy)."""
    return [name for name, k in LOGIT_LOSSES.items() if k.uses_teacher]


# pipeline side ---------------------------------------------------------------------------------------------------
def default_terms(alpha: float) -> list[LossTerm]:
    """The classic alpha-mix as terms: alpha x kd + (1 - alpha) x ce (for a regression task mse and the label
    squared error, see `build_logit_loss`)."""
    return [LOGIT_LOSSES.get("kd").params(kind="kd", weight=alpha),
            LOGIT_LOSSES.get("ce").params(kind="ce", weight=1.0 - alpha)]


def build_logit_loss(terms: list[LossTerm], ctx: BuildContext) -> Loss:
    """Σ weight x kind(params) over the terms, each built by its registered kind."""
    total: Optional[Loss] = None
    for term in terms:
        kind = LOGIT_LOSSES.get(term.kind)
        if ctx.regression and kind.compares_distributions:
            raise ValueError(f"distill.loss: {term.kind} compares class distributions, but this task is a regression "
                             "with one output: use mse (to the teacher's output) and ce (the squared error to the "
                             "label)")
        part = term.weight * kind.build(term, ctx)
        total = part if total is None else total + part
    assert total is not None, "check_terms refuses an empty loss"
    return total


def feature_loss(kind: str, pairs: list[tuple[str, str]]) -> Loss:
    return FEATURE_LOSSES.get(kind).make(pairs)


class Transformed(Loss):
    """A distribution loss computed on transformed logits (teacher and student each transformed on its own)."""

    def __init__(self, inner: Loss, transform: LogitTransform):
        super().__init__()
        self.inner, self.transform = inner, transform
        self.needs_teacher = inner.needs_teacher

    def compute(self, inputs: LossInputs) -> Any:
        # replace, not a new LossInputs: every other field (epoch, progress, features, ...) reaches the inner loss
        changed = dataclasses.replace(
            inputs, student=self.transform.apply(inputs.student.float()),
            teacher=None if inputs.teacher is None else self.transform.apply(inputs.teacher.float()),
            teacher_top_k=None)  # compact rows are untransformed: the inner loss reads the transformed dense logits
        return self.inner.compute(changed)

    def describe(self) -> str:
        inner = self.inner.describe()
        if inner.endswith(")"):
            return f"{inner[:-1]},{self.transform.tag})"
        return f"{inner}({self.transform.tag})"


def temperature_of(term: Any, ctx: BuildContext) -> float:
    return term.temperature if term.temperature is not None else ctx.temperature


def with_transform(loss: Loss, term: Any, ctx: BuildContext) -> Loss:
    """Wrap `loss` in the term's (or the recipe's) logit transform; raw logits stay unwrapped, so descriptions and
    stage fingerprints of runs made before transforms existed are unchanged."""
    name = term.transform if term.transform is not None else ctx.transform
    return loss if name == RAW else Transformed(loss, TRANSFORMS.get(name))
