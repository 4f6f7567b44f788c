"""The registry of task kinds (`data.task`): one module per kind in `leankd/tasks/kinds/` registers a `TaskKind`.

A kind owns how its data becomes a `Task` (`build`), the stand-in keywords `leankd validate` builds models with
before any data is read (`model_defaults`), the recipe sections that belong to it with the model each is validated
with (`data_sections`, `distill_sections`: name -> model; refused for any other kind) and its recipe rules (`check`,
called from one generic Recipe validator). The recipe validates `data.task` against this registry, so a kind that
is registered (also from outside the package, e.g. a test) is accepted everywhere and one that is not is refused
with close names.

It lives in core (importing nothing of leankd but the registry) so that recipe.py can read it while the kinds'
modules import the recipe: the entries take the recipe and its data section as arguments, not as imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .registry import Registry, RegistryError

TASK_KINDS: Registry["TaskKind"] = Registry("task kind", discover="leankd.tasks.kinds")


def _nothing(_: Any) -> None:
    return None


def _no_notes(_: dict) -> list[str]:
    return []


def _no_defaults(_: Any) -> dict:
    return {}


@dataclass
class TaskKind:
    """A registered task kind.

    `build(data_config, device, seed, channels_last) -> Task`; `model_defaults(data_config) -> dict`: placeholders
    for `Task.model_defaults` (e.g. a vocabulary size) when no data is read; `check(recipe)`: raise ValueError for
    settings this kind cannot run (read when the recipe is); `check_data(data_config)`: the same for the data section
    alone. `check_source(data_config)`: what `leankd validate` finds wrong with the data source (a list of
    what it could not check; an error for a broken one), None for the default (the path exists).
    `data_sections` / `distill_sections`: the `data.<name>` / `distill.<name>` sections this kind owns, each with
    the pydantic model (a `leankd.core.params.Strict`) the recipe validates it with, e.g. {"audio": AudioConfig}.
    A data section left out is filled with the model's defaults; a distill section stays unset unless `check`
    fills it. Two kinds may share a section (text_classification and text_regression share `text`) only with the
    same model. `refusals`: section -> a hint shown when a recipe of this kind sets a section another kind owns.
    `metric_choices`: quality figures a recipe may name as the primary metric (`data.text.metric`).
    `student_stages(ctx) -> {role: report label}`: student stages of the kind's own, trained after the baseline and
    added to `ctx.stages` (ctx: a `leankd.stages.StudentStages`), each role shown in the report under its label; the
    pipeline calls it for every kind that has one, so it never names a kind. `replaces_student`: those stages include
    the run's main `student` (seq2seq: its main `distill.seq` method), so the pipeline trains no logit/feature KD
    student of its own; otherwise they come after it. `report_notes(models) -> [sentence]`: notes the kind adds under
    the report's tables, from the measured model entries (seq2seq: how its students' decoding compares).
    `stream_sources`: the kind reads a streamed `data.source` (webdataset:, hf-stream:; `data.stream`); a recipe of
    any other kind naming one is refused when it is read."""

    name: str
    build: Callable[..., Any]
    model_defaults: Callable[[Any], dict] = _no_defaults
    check: Callable[[Any], None] = _nothing
    check_data: Callable[[Any], None] = _nothing
    check_source: Callable[[Any], Any] = _nothing
    data_sections: Mapping[str, type] = field(default_factory=dict)
    distill_sections: Mapping[str, type] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    metric_choices: tuple[str, ...] = ()
    summary: str = ""
    student_stages: Optional[Callable[[Any], dict[str, str]]] = None
    replaces_student: bool = False
    report_notes: Callable[[dict], list[str]] = _no_notes
    stream_sources: bool = False

    def __post_init__(self) -> None:
        """Refuse, when the kind is declared rather than when a recipe is read: a bare section name (the old
        `data_sections=("audio",)`) leaves the recipe nothing to validate the section with, and `replaces_student`
        without the `student_stages` that train the student would give a run with no KD student at all."""
        if self.replaces_student and self.student_stages is None:
            raise RegistryError(f"task kind {self.name!r}: replaces_student needs the student_stages that train it")
        for where in ("data", "distill"):
            sections = getattr(self, f"{where}_sections")
            if not isinstance(sections, Mapping) or not all(isinstance(m, type) for m in sections.values()):
                raise RegistryError(f"task kind {self.name!r}: {where}_sections maps each section name to the model "
                                    f"that validates it, e.g. {{'audio': AudioConfig}}; got {sections!r}")


def register_kind(kind: TaskKind) -> TaskKind:
    return TASK_KINDS.add(kind.name, kind, origin=f"{getattr(kind.build, '__module__', '?')}."
                                                  f"{getattr(kind.build, '__qualname__', kind.name)}")


def owners(section: str, where: str = "data") -> list[str]:
    """The kinds that own `data.<section>` (where="data") or `distill.<section>` (where="distill")."""
    attr = "data_sections" if where == "data" else "distill_sections"
    return [name for name, kind in TASK_KINDS.items() if section in getattr(kind, attr)]


def section_names(where: str = "data") -> list[str]:
    """Every `data.<name>` (or `distill.<name>`) section some registered kind owns, sorted."""
    return sorted({s for _, kind in TASK_KINDS.items() for s in getattr(kind, f"{where}_sections")})


def section_model(section: str, where: str = "data") -> Optional[type]:
    """The model `data.<section>` (or `distill.<section>`) is validated with, None when no registered kind owns
    it. Kinds that share a section must agree on its model: a recipe could not mean both."""
    models = {name: getattr(kind, f"{where}_sections")[section] for name, kind in TASK_KINDS.items()
              if section in getattr(kind, f"{where}_sections")}
    distinct = set(models.values())
    if len(distinct) > 1:
        raise RegistryError(f"{where}.{section} is declared with different models by the task kinds "
                            + ", ".join(f"{name} ({model.__qualname__})" for name, model in models.items())
                            + ": one section has one model, rename one of them")
    return distinct.pop() if distinct else None


__all__ = ["TASK_KINDS", "TaskKind", "register_kind", "owners", "section_names", "section_model"]
